import nexus_cap_vision
from nexus_kernel.testing import check_capability_plugin


def test_vision_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_vision, distribution="nexus-cap-vision")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("vision", "image", ("vision QA",))
    ]
