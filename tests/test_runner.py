"""The stage runner: skipping, rerunning downstream, --from/--only/--force, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_kernel.config import load_config
from nexus_kernel.errors import ConfigError, StageError
from nexus_kernel.kit.testing import plugin_set_of
from nexus_kernel.run.fsio import atomic_write_text
from nexus_kernel.run.runner import (
    RunContext,
    Stage,
    StageRunner,
    remove_stale_temp_files,
)


class Pipeline:
    """Three toy stages whose inputs the test controls; `calls` records what ran."""

    def __init__(self, run_dir: Path) -> None:
        self.inputs = {"a": 1, "b": 1, "c": 1}
        self.calls: list[str] = []
        self.fail_in: str | None = None
        self.creates_input: dict[str, int] = {}
        """Per stage, what its action adds to its own input (a stage that builds what it reads)."""
        self.context = RunContext(run_dir, load_config(Path(__file__).parents[1] / "configs/nexus.toml"),
                                  plugin_set_of())

    def stage(self, number: int, name: str) -> Stage:
        def action(context: RunContext) -> str:
            self.calls.append(name)
            if self.fail_in == name:
                raise ConfigError(f"{name} broke")
            self.inputs[name] += self.creates_input.get(name, 0)
            atomic_write_text(context.run_dir / f"{name}.txt", f"{name}={self.inputs[name]}\n")
            return f"wrote {name}"

        return Stage(number, name, f"toy {name}", (f"{name}.txt",), action,
                     lambda context: self.inputs[name])

    def run(self, **options: str | bool) -> list[tuple[str, str]]:
        self.calls.clear()
        stages = [self.stage(0, "a"), self.stage(1, "b"), self.stage(2, "c")]
        outcomes = StageRunner(stages, self.context).run(**options)  # type: ignore[arg-type]
        return [(o.stage.name, o.status) for o in outcomes]


@pytest.fixture
def toy(nexus_run_dir: Path) -> Pipeline:
    return Pipeline(nexus_run_dir)


def test_first_run_runs_every_stage_and_records_it(toy: Pipeline) -> None:
    assert toy.run() == [("a", "passed"), ("b", "passed"), ("c", "passed")]
    assert toy.calls == ["a", "b", "c"]
    state = json.loads((toy.context.run_dir / "state.json").read_text())
    assert {state["stages"][n]["status"] for n in "abc"} == {"passed"}


def test_unchanged_inputs_skip(toy: Pipeline) -> None:
    toy.run()
    assert toy.run() == [("a", "skipped"), ("b", "skipped"), ("c", "skipped")]
    assert toy.calls == []


def test_a_stage_that_creates_its_own_inputs_is_up_to_date_after_it(toy: Pipeline) -> None:
    toy.creates_input["a"] = 1  # like stage 1, which builds the demo teachers it then registers
    toy.run()
    assert toy.run()[:3] == [("a", "skipped"), ("b", "skipped"), ("c", "skipped")]


def test_changed_input_reruns_that_stage_and_every_later_one(toy: Pipeline) -> None:
    toy.run()
    toy.inputs["b"] = 2
    assert toy.run()[:3] == [("a", "skipped"), ("b", "passed"), ("c", "passed")]
    assert toy.calls == ["b", "c"]


def test_modified_or_missing_output_reruns(toy: Pipeline) -> None:
    toy.run()
    (toy.context.run_dir / "c.txt").write_text("tampered\n")
    toy.run()
    assert toy.calls == ["c"]
    (toy.context.run_dir / "a.txt").unlink()
    toy.run()
    assert toy.calls == ["a", "b", "c"]


def test_from_only_and_force(toy: Pipeline) -> None:
    toy.run()
    toy.run(start="b")
    assert toy.calls == ["b", "c"]
    toy.run(only="1")
    assert toy.calls == ["b"]
    toy.run(force=True)
    assert toy.calls == ["a", "b", "c"]
    with pytest.raises(StageError, match="--from and --only cannot be combined"):
        toy.run(start="a", only="b")
    with pytest.raises(StageError, match=r"unknown stage 'z'; stages: a \(0\), b \(1\), c \(2\)"):
        toy.run(start="z")


def test_only_needs_earlier_stages_up_to_date(toy: Pipeline) -> None:
    with pytest.raises(StageError, match=r"--only c: stage 0 \(a\) is not up to date \(never run\)"):
        toy.run(only="c")
    toy.run()
    toy.inputs["a"] = 5
    with pytest.raises(StageError, match=r"stage 0 \(a\) is not up to date \(inputs changed\)"):
        toy.run(only="c")


def test_a_failure_is_recorded_and_the_next_run_retries(toy: Pipeline) -> None:
    toy.fail_in = "b"
    with pytest.raises(ConfigError, match="b broke"):
        toy.run()
    state = json.loads((toy.context.run_dir / "state.json").read_text())
    assert state["stages"]["b"]["status"] == "failed"
    assert state["stages"]["b"]["error"] == "b broke"
    toy.fail_in = None
    toy.run()
    assert toy.calls == ["b", "c"]


def test_an_interrupted_stage_reruns(toy: Pipeline) -> None:
    toy.run()
    state_path = toy.context.run_dir / "state.json"
    state = json.loads(state_path.read_text())
    state["stages"]["b"]["status"] = "running"
    state_path.write_text(json.dumps(state))
    toy.run()
    assert toy.calls == ["b", "c"]


def test_stale_temp_files_are_removed_inside_the_run_dir_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "configs").mkdir(parents=True)
    stale = run_dir / "configs" / ".global_config.json.abc123.tmp"
    stale.write_text("{partial")
    outside = tmp_path / ".outside.tmp"
    outside.write_text("keep")
    (run_dir / "link").symlink_to(tmp_path, target_is_directory=True)
    assert remove_stale_temp_files(run_dir) == [stale]
    assert not stale.exists() and outside.exists()
