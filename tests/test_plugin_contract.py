"""The CapabilityPlugin contract: hooks bound by name, modules checked against their
protocols, and plugins written to the 0.1 contract refused with a clear error."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel import Capability, CapabilityPlugin, hookimpl
from nexus_kernel.errors import PluginError
from nexus_kernel.kit.plugin_kit import StudentModule, TeacherModule, module_problems, standard_hooks
from nexus_kernel.kit.testing import ConformanceError, check_capability_plugin, plugin_module, plugin_set_of

CAPABILITY = Capability("chemistry", "text", ("Chemistry",), ("ChemQA",))


def _student_module(name: str, **functions: Any) -> types.ModuleType:
    def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> None:
        return None

    def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
              reference: Any = None) -> dict[str, Any]:
        return {}

    def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
        return "an answer"

    return plugin_module(name, **{"distill_plan": distill_plan, "score": score, "answer": answer, **functions})


def _teacher_module(name: str) -> types.ModuleType:
    def demo() -> None:
        return None

    def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> None:
        return None

    return plugin_module(name, demo=demo, probe_plan=probe_plan)


@pytest.fixture
def modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.ModuleType]:
    """`acme_teacher` and a conforming `acme_student`, importable by name."""
    found = {"acme_teacher": _teacher_module("acme_teacher"), "acme_student": _student_module("acme_student")}
    for name, module in found.items():
        monkeypatch.setitem(sys.modules, name, module)
    return found


def test_the_hooks_are_the_objects_methods_bound_by_name(modules: dict[str, types.ModuleType]) -> None:
    plugin = CapabilityPlugin(CAPABILITY, teacher="acme_teacher", student="acme_student", synthetic="chem-v1")
    plugin_set = plugin_set_of(("chemistry", plugin))
    assert plugin_set.capabilities()["chemistry"][0] == CAPABILITY
    answer = plugin_set.call_for("chemistry", "answer", capability=CAPABILITY, model=None, inputs=["x"], assets={})
    assert answer == "an answer"
    datasets = plugin_set.call_for("chemistry", "resolve_datasets", capability=CAPABILITY, settings={})
    assert datasets == {"train": "synthetic:chem-v1", "test": "synthetic:chem-v1"}


def test_positional_arguments_cannot_misbind() -> None:
    with pytest.raises(TypeError):
        CapabilityPlugin(CAPABILITY, "acme_teacher", "acme_student")  # type: ignore[misc]


def test_a_student_module_without_score_is_an_error_naming_the_module(
        modules: dict[str, types.ModuleType], monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _student_module("acme_student")
    del broken.score
    monkeypatch.setitem(sys.modules, "acme_student", broken)
    plugin = CapabilityPlugin(CAPABILITY, teacher="acme_teacher", student="acme_student")
    plugin_set = plugin_set_of(("chemistry", plugin))
    with pytest.raises(PluginError, match=r"student module acme_student breaks the StudentModule protocol: "
                                          r"no function score\(model, split, datasets, limit, reference\)"):
        plugin_set.call_for("chemistry", "retention_metric", capability=CAPABILITY, model=None, split="test",
                            datasets={}, limit=None, reference=None)


def test_module_problems_name_missing_functions_and_wrong_parameters() -> None:
    def answer(model: Any, prompt: list[str], assets: Any) -> str:
        return ""

    student = _student_module("s", answer=answer)
    del student.distill_plan
    assert module_problems(student, StudentModule) == [
        "no function distill_plan(teacher, student, datasets)",
        "answer(model, prompt, assets) must take (model, inputs, assets)",
    ]
    assert module_problems(_teacher_module("t"), TeacherModule) == []


def test_the_conformance_kit_checks_the_student_module(
        modules: dict[str, types.ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_holder.py").write_text(
        "from nexus_kernel import Capability, CapabilityPlugin\n"
        "plugin = CapabilityPlugin(Capability('chemistry', 'text', ('Chemistry',), ('ChemQA',)),\n"
        "                          teacher='acme_teacher', student='acme_student', synthetic='chem-v1')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import acme_holder

    try:
        assert check_capability_plugin(acme_holder.plugin) == [CAPABILITY]
        del modules["acme_student"].answer
        with pytest.raises(ConformanceError, match="no function answer"):
            check_capability_plugin(acme_holder.plugin)
    finally:
        del sys.modules["acme_holder"]


def test_an_override_in_a_subclass_is_a_hook_without_a_marker(modules: dict[str, types.ModuleType]) -> None:
    class Anchored(CapabilityPlugin):
        def anchor_loss(self, capability: Capability, student_hidden: Any, teacher_coefficients: Any,
                        eigenvalues: Any) -> str:
            return "custom"

    plugin_set = plugin_set_of(("chemistry", Anchored(CAPABILITY, teacher="acme_teacher", student="acme_student")))
    assert "anchor_loss" in plugin_set.loaded[0].hooks
    assert plugin_set.call_for("chemistry", "anchor_loss", capability=CAPABILITY, student_hidden=None,
                               teacher_coefficients=None, eigenvalues=None) == "custom"


def test_standard_hooks_of_the_old_contract_raises_what_replaces_it() -> None:
    with pytest.raises(PluginError, match="standard_hooks was removed.*CapabilityPlugin"):
        standard_hooks(CAPABILITY, synthetic="x", teacher="t", student="s")


def test_a_module_carrying_hooks_bound_by_position_is_refused() -> None:
    def standard_hooks() -> Any:  # what nexus-kernel 0.1 built: closures, bound by tuple position
        @hookimpl
        def register_capabilities() -> list[Capability]:
            return [CAPABILITY]
        return register_capabilities

    old = plugin_module("acme_old", register_capabilities=standard_hooks())
    with pytest.raises(PluginError, match="binds its hooks with plugin_kit.standard_hooks"):
        plugin_set_of(("old", old))


def test_an_entry_point_naming_the_module_instead_of_the_plugin_is_refused(
        modules: dict[str, types.ModuleType]) -> None:
    plugin = CapabilityPlugin(CAPABILITY, teacher="acme_teacher", student="acme_student")
    holder = plugin_module("acme_cap_chemistry", plugin=plugin)
    with pytest.raises(PluginError, match='point it at "acme_cap_chemistry:plugin"'):
        plugin_set_of(("chemistry", holder))


def test_a_capability_without_synthetic_data_needs_a_data_dir(modules: dict[str, types.ModuleType]) -> None:
    plugin_set = plugin_set_of(("chemistry", CapabilityPlugin(CAPABILITY, teacher="acme_teacher",
                                                              student="acme_student")))
    with pytest.raises(PluginError, match="capabilities.chemistry.data_dir"):
        plugin_set.call_for("chemistry", "resolve_datasets", capability=CAPABILITY, settings={})
