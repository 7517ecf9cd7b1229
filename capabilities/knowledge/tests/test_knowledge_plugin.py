import nexus_cap_knowledge

from nexus_kernel.kit.testing import check_capability_plugin


def test_knowledge_plugin_conforms() -> None:
    capabilities = check_capability_plugin(nexus_cap_knowledge.plugin, distribution="nexus-cap-knowledge")
    assert [(c.name, c.modality, c.categories, c.benchmarks) for c in capabilities] == [
        ("knowledge", "text", ("Knowledge",), ("Knowledge",))
    ]


def test_there_is_no_demo_teacher() -> None:
    from nexus_cap_knowledge import teacher

    assert teacher.demo() is None


def test_probe_plan_drives_ablation_and_profiling(tmp_path) -> None:
    import itertools

    from nexus_cap_knowledge import teacher
    from nexus_cap_knowledge.benchmark import pair_of
    from nexus_cap_knowledge.data import SyntheticRecipe

    from nexus_kernel.kit.testing import check_text_probe_plan

    words = {word for q in itertools.islice(SyntheticRecipe().train(), 400) for text in pair_of(q)
             for word in text.replace("?", " ").replace(":", " ").split()}
    assert list(check_text_probe_plan(teacher, words, tmp_path)) == ["model.layers.0", "model.layers.1"]
