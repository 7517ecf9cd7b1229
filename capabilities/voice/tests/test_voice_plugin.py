import nexus_cap_voice
from nexus_kernel.testing import check_capability_plugin


def test_voice_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_voice, distribution="nexus-cap-voice")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("voice", "audio", ("voice cosine", "voice centroid accuracy"))
    ]
