import nexus_cap_math
from nexus_kernel.testing import check_capability_plugin


def test_math_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_math, distribution="nexus-cap-math")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("math", "text", ("GSM8K",))
    ]
