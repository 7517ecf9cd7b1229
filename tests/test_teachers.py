"""Demo teachers: planning, building in worker processes, caching by recipe, and never
touching a user's teacher folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_helpers import fake_demo_build

from nexus_kernel import Capability, hookimpl
from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.errors import RegistryError, StageError
from nexus_kernel.kit.testing import plugin_set_of
from nexus_kernel.teachers.demo import (
    PARTIAL_PREFIX,
    RECIPE_FILE,
    build_teachers,
    plan_builds,
)
from nexus_kernel.teachers.registry import TeacherEntry

TOY = Capability("toy", "text", ("Toy",), ("toy",))


class ToyPlugin:
    def __init__(self, name: str = "toy-demo", score: float = 1.0, steps: int = 3) -> None:
        self.recipe = {"seed": 1, "steps": steps, "score": score}
        self.name = name

    @hookimpl
    def register_capabilities(self) -> list[Capability]:
        return [TOY]

    @hookimpl
    def demo_teacher(self, capability: Capability, settings: dict) -> DemoTeacher:
        return DemoTeacher(self.name, "toy", self.recipe, self.recipe["steps"], fake_demo_build,
                           "toy", minimum=0.9)


def _entry(models: Path, name: str = "toy-demo") -> TeacherEntry:
    return TeacherEntry(name, 1000, "Toy", "", "toy", "test-toy", ("toy",), str(models / name), 2)


def _plan(plugin: ToyPlugin, models: Path, name: str = "toy-demo") -> list:
    return plan_builds([_entry(models, name)], plugin_set_of(("toy", plugin)), {})


def test_build_then_cached_then_rebuilt_when_the_recipe_changes(tmp_path: Path) -> None:
    plugin = ToyPlugin()
    killed = tmp_path / f"{PARTIAL_PREFIX}toy-demo-999999"
    killed.mkdir()
    (killed / "config.json").write_text("half written")
    [first] = build_teachers(_plan(plugin, tmp_path), show_progress=False)
    assert not first.cached and first.scores["toy"]["value"] == 1.0
    marker = json.loads((tmp_path / "toy-demo" / RECIPE_FILE).read_text())
    assert marker["recipe"] == plugin.recipe and marker["scores"]["toy"]["n"] == 1
    [planned] = _plan(plugin, tmp_path)
    assert planned.cached
    [again] = build_teachers([planned], show_progress=False)
    assert again.cached
    plugin.recipe = {**plugin.recipe, "steps": 4}
    [changed] = _plan(plugin, tmp_path)
    assert not changed.cached
    build_teachers([changed], show_progress=False)
    assert json.loads((tmp_path / "toy-demo" / "config.json").read_text())["recipe"]["steps"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def test_a_teacher_below_its_minimum_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"toy-demo.*scored 0.500 on held-out toy, below its minimum 0.90"):
        build_teachers(_plan(ToyPlugin(score=0.5), tmp_path), show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_build_that_never_reaches_its_validation_target_is_not_saved(tmp_path: Path) -> None:
    plugin = ToyPlugin(score=0.95)
    plugin.recipe = {**plugin.recipe, "validation": 0.91, "validation_target": 0.94}
    with pytest.raises(StageError, match=r"toy-demo' did not reach its validation target within its cap of 3 "
                                         r"steps; validation 0.910 after 3 steps \(target 0.94\); held-out toy "
                                         r"0.950; not saved.*raise its plan's `steps`"):
        build_teachers(_plan(plugin, tmp_path), show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_build_that_reaches_its_target_records_its_rounds(tmp_path: Path) -> None:
    plugin = ToyPlugin(score=0.93)
    plugin.recipe = {**plugin.recipe, "validation": 0.96, "validation_target": 0.94}
    [report] = build_teachers(_plan(plugin, tmp_path), show_progress=False)
    marker = json.loads((tmp_path / "toy-demo" / RECIPE_FILE).read_text())
    assert marker["training"] == {"steps": 3, "target": 0.94, "reached": True,
                                  "rounds": [{"steps": 3, "score": 0.96}]}
    assert "3 steps, validation 0.960; held-out toy 0.930" in report.headline()
    [cached] = build_teachers(_plan(plugin, tmp_path), show_progress=False)
    assert cached.cached and ": cached; held-out toy 0.930" in cached.headline()


def test_a_killed_builds_partial_folder_goes_even_when_the_teacher_is_cached(tmp_path: Path) -> None:
    plugin = ToyPlugin()
    build_teachers(_plan(plugin, tmp_path), show_progress=False)
    killed = tmp_path / f"{PARTIAL_PREFIX}toy-demo-424242"
    (killed / "half").mkdir(parents=True)
    [planned] = _plan(plugin, tmp_path)
    assert planned.cached
    build_teachers([planned], show_progress=False)
    assert not killed.exists()
    assert (tmp_path / "toy-demo" / RECIPE_FILE).is_file()


def test_the_progress_bar_expects_first_rounds_and_ends_at_what_was_trained() -> None:
    from nexus_kernel.teachers.demo import _StepBar

    quick = DemoTeacher("quick", "toy", {}, 300, fake_demo_build, "toy", 0.9, expected_steps=100)
    slow = DemoTeacher("slow", "toy", {}, 500, fake_demo_build, "toy", 0.9, expected_steps=200)
    bar = _StepBar([quick, slow], show=False)
    assert bar.bar.total == 300
    bar.advance("slow", 250)  # past its first round: counted at its cap until it ends
    assert bar.bar.total == 100 + 500
    bar.advance("quick", 100)
    bar.finish("quick", "quick done")
    bar.advance("slow", 50)
    bar.finish("slow", "slow done")
    assert bar.bar.total == sum(bar.done.values()) == 400
    bar.close()


def test_a_user_folder_is_never_planned_or_touched(tmp_path: Path) -> None:
    folder = tmp_path / "toy-demo"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"user data")
    assert _plan(ToyPlugin(), tmp_path) == []
    assert (folder / "weights.safetensors").read_bytes() == b"user data"


def test_a_missing_teacher_no_plugin_builds_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"teacher 'acme-7b' \(toy\): folder .*acme-7b does not "
                                            r"exist and no plugin can build it; its plugin builds 'toy-demo'"):
        _plan(ToyPlugin(), tmp_path, name="acme-7b")


def test_shared_data_skips_with_the_reason_when_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_kernel.kit.testing import SHARED_DATA_ENV, shared_data

    monkeypatch.delenv(SHARED_DATA_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"shared/data/gsm8k is absent"):
        shared_data("gsm8k", tmp_path / "tests" / "test_x.py")
    (tmp_path / "shared" / "data" / "gsm8k").mkdir(parents=True)
    assert shared_data("gsm8k", tmp_path / "repo" / "tests" / "test_x.py") == tmp_path / "shared/data/gsm8k"
