import nexus_cap_math

from nexus_kernel.kit.testing import check_capability_plugin


def test_math_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_math.plugin, distribution="nexus-cap-math")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("math", "text", ("GSM8K",))
    ]


def test_probe_plan_drives_ablation_and_profiling(tmp_path) -> None:
    from nexus_cap_math import teacher
    from nexus_cap_math.data import TEMPLATE_WORDS

    from nexus_kernel.kit.testing import check_text_probe_plan

    assert list(check_text_probe_plan(teacher, TEMPLATE_WORDS, tmp_path)) == ["model.layers.0", "model.layers.1"]
