import nexus_cap_math
from nexus_kernel.testing import check_capability_plugin


def test_math_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_math, distribution="nexus-cap-math")
    assert [(c.name, c.modality, c.benchmarks) for c in capabilities] == [
        ("math", "text", ("GSM8K",))
    ]


def test_probe_plan_drives_ablation_and_profiling(tmp_path) -> None:
    from nexus_cap_math import teacher
    from nexus_cap_math.data import TEMPLATE_WORDS
    from nexus_kernel.loading import load_teacher_folder
    from nexus_kernel.testing import check_probe_plan, tiny_causal_teacher

    loaded = load_teacher_folder("tiny", tiny_causal_teacher(tmp_path / "teacher", TEMPLATE_WORDS), "fp32")
    plan = teacher.probe_plan(loaded, 20, {"train": "synthetic:any", "test": "synthetic:any"})
    states = check_probe_plan(loaded.model, plan, 20)
    assert list(states) == ["model.layers.0", "model.layers.1"]
    tokens = sum(int(batch[1].sum()) for batch in plan.stream(24, 8))
    assert states["model.layers.0"].count == tokens
