import nexus_cap_reasoning
from nexus_kernel.testing import check_capability_plugin


def test_reasoning_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_reasoning, distribution="nexus-cap-reasoning")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("reasoning", "text", ("MMLU",))
    ]
