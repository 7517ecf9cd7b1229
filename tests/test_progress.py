"""Progress a person can follow: the shared bar helper, and the counts stages 2, 5 and 6 show."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from nexus_kernel import hookimpl
from nexus_kernel.capability import Capability
from nexus_kernel.run import progress as progress_module
from nexus_kernel.run.distributed import World
from nexus_kernel.run.logs import LOGGER_NAME, configure_logging
from nexus_kernel.run.progress import progress


@pytest.fixture
def every_update_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars redraw on every update (tqdm otherwise skips draws within 0.1 s of the last)."""
    import tqdm

    class Eager(tqdm.tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, mininterval=0, miniters=1, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", Eager)


@pytest.fixture
def logs_reset() -> Any:
    """The `nexus` handlers a test configures are removed after it (not left writing to its
    captured stderr)."""
    yield
    root = logging.getLogger(LOGGER_NAME)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest.fixture
def events(tmp_path: Path, logs_reset: None) -> Any:
    """The `nexus` log lines as dicts, read from the JSON lines file the run would keep."""
    path = tmp_path / "events.jsonl"
    configure_logging(path)
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_a_bar_counts_to_its_total_on_stderr_and_only_rank_0_draws_it(
        every_update_drawn: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with progress(12, "counting", "item") as bar:
        for _ in range(12):
            bar.update(1)
    captured = capsys.readouterr()
    assert "counting" in captured.err and "12/12" in captured.err and captured.out == ""
    monkeypatch.setattr(progress_module, "world", lambda: World(rank=1, size=2))
    with progress(12, "a follower's bar", "item") as bar:
        bar.update(12)
    with progress(12, "switched off", show=False) as bar:
        bar.update(12)
    assert capsys.readouterr().err == ""


def test_a_log_line_during_a_bar_is_written_above_it_not_after_it(
        every_update_drawn: None, logs_reset: None, capsys: pytest.CaptureFixture[str]) -> None:
    from nexus_kernel.run.logs import get_logger

    configure_logging()  # its console handler writes to the captured stderr
    handler = logging.getLogger(LOGGER_NAME).handlers[0]
    with progress(4, "counting", "item") as bar:
        bar.update(2)
        get_logger("test").info("halfway", done="2/4")
        bar.update(2)
    assert handler.stream is sys.stderr  # given back when the bar closed
    get_logger("test").info("after the bar")
    pieces = [piece.strip() for piece in capsys.readouterr().err.replace("\r", "\n").split("\n")]
    assert next(piece for piece in pieces if "halfway" in piece).startswith("[info")
    assert any("4/4" in piece for piece in pieces) and "after the bar" in pieces[-2]


# stage 2 -------------------------------------------------------------------------------------

_VOCAB, _LENGTH = 40, 8


class _Toy:
    """A capability whose probe plan is next-token loss on seeded random sequences."""

    @hookimpl
    def register_capabilities(self) -> list[Capability]:
        return [Capability("toy", "text", ("toy",), ("toy_score",), max_rank=4)]

    @hookimpl
    def profile_capability(self, capability: Capability, teacher: Any, n_probe: int, datasets: Any) -> Any:
        from nexus_kernel.algorithms.profiling import plan_from_items, repeated_blocks

        def items() -> Any:
            generator = torch.Generator().manual_seed(0)
            while True:
                yield torch.randint(0, _VOCAB, (_LENGTH,), generator=generator)

        return plan_from_items(items, torch.stack, lambda model, ids: model(input_ids=ids, labels=ids).loss,
                               repeated_blocks(teacher.model), n_probe)


def _teacher(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as transformers_logging

    torch.manual_seed(0)
    transformers_logging.disable_progress_bar()  # its "Writing model shards" bar is not the stage's
    LlamaForCausalLM(LlamaConfig(vocab_size=_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                 num_attention_heads=2, max_position_embeddings=64)).save_pretrained(folder)
    transformers_logging.enable_progress_bar()  # as a run finds it: the stage must switch it off itself
    return folder


def test_stage_2_shows_the_load_the_ablation_the_removal_and_the_streaming_with_their_counts(
        tmp_path: Path, every_update_drawn: None, events: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from nexus_kernel.config import load_config
    from nexus_kernel.kit.testing import plugin_set_of
    from nexus_kernel.run.layout import ENV_FILE
    from nexus_kernel.run.runner import RunContext
    from nexus_kernel.run.settings import CapabilitySettings
    from nexus_kernel.stages.profile import profile_capability
    from nexus_kernel.teachers.access import TeacherSession
    from nexus_kernel.teachers.registry import TeacherEntry

    config_file = tmp_path / "nexus.toml"
    config_file.write_text('[profiling]\nprobe_samples = 4\nsamples = 12\nbatch_size = 5\nkey_layers = 2\n'
                           'quantization = "fp32"\n\n[student]\nbackbone = "teacher:toy"\nkeep_layers = 1\n')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ENV_FILE).write_text('{"device": "cpu"}')
    context = RunContext(run_dir, load_config(config_file), plugin_set_of(("toy", _Toy())))
    entry = TeacherEntry("toy-teacher", 30_000, "toy", "", "toy", "test-toy", ("toy_score",),
                         str(_teacher(tmp_path / "teacher")), 1)
    with TeacherSession(context) as session:
        profile = profile_capability(context, "toy", entry, {}, CapabilitySettings(4, 1.0, 1.0), session)

    err = capsys.readouterr().err
    assert "toy: ablating layers" in err and "3/3" in err  # every candidate block
    assert "toy: removing blocks" in err and "5/5" in err  # 3 single removals, then the 2 left
    assert "toy: streaming activations" in err and "12/12" in err  # 5 + 5 + 2 samples
    assert "Loading weights" not in err
    lines = {line["event"]: line for line in events() if line.get("capability") == "toy"}
    assert lines["loading teacher"]["quantization"] == "fp32"
    assert lines["teacher loaded"]["model"] == "LlamaForCausalLM" and lines["teacher loaded"]["seconds"] >= 0
    assert lines["layers ranked by ablation"]["layers"] == "3/3"
    assert lines["blocks ranked by removal"]["trials"] == 5
    assert lines["activations streamed"]["samples"] == "12/12" and lines["activations streamed"]["batches"] == 3
    assert sum(layer["vectors"] for layer in profile["layers"].values()) == 2 * 12 * _LENGTH


# stage 5 -------------------------------------------------------------------------------------

_FAKE_CHILD = """
import json, sys
from nexus_kernel.stages.validate_child import _report
job = json.load(open(sys.argv[3]))
sys.stderr.write("a library's warning\\n")
sys.stderr.write("nexus-progress {\\"event\\": \\"cut sh\\n")  # a report cut short: not JSON
_report("student loaded", seconds=0.1)
for done, name in enumerate(["alpha", "beta"], start=1):
    sys.stderr.write("an unfinished bar\\r")
    _report("scored", capability=name, done=done, total=2, seconds=0.2)
json.dump({"scores": {"alpha": 1, "beta": 2}}, open(job["output"], "w"))
"""


def test_stage_5_hears_each_capability_the_child_scores_and_keeps_them_out_of_its_stderr_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_kernel.stages.validate_child import evaluate_in_child

    (tmp_path / "child.py").write_text(_FAKE_CHILD)
    fake = tmp_path / "python"  # what the parent starts as `python -m nexus_kernel.stages.validate_child JOB`
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'child.py'} \"$@\"\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    heard: list[dict[str, Any]] = []
    code, answer, tail = evaluate_in_child({"output": str(tmp_path / "out.json")}, tmp_path / "job.json",
                                           on_progress=heard.append)
    assert code == 0 and answer == {"scores": {"alpha": 1, "beta": 2}}
    assert [event["event"] for event in heard] == ["student loaded", "scored", "scored"]
    assert [(event["done"], event["total"]) for event in heard[1:]] == [(1, 2), (2, 2)]
    assert "a library's warning" in tail
    assert [line for line in tail.splitlines() if "nexus-progress" in line] == ['nexus-progress {"event": "cut sh']


def test_a_child_past_its_timeout_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from nexus_kernel.stages.validate_child import evaluate_in_child

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(subprocess.TimeoutExpired):
        evaluate_in_child({"output": str(tmp_path / "out.json")}, tmp_path / "job.json", timeout=0.5)


# stage 6 -------------------------------------------------------------------------------------


def test_stage_6_rescores_one_capability_at_a_time_to_the_same_scores(
        tmp_path: Path, every_update_drawn: None, events: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus_kernel.stages import package

    calls = []

    def score_capabilities(plugins: Any, names: Any, model_of: Any, datasets: Any, limit: int, run_dir: Path
                           ) -> dict[str, Any]:
        calls.append(list(names))
        return {name: {"score": model_of(name)} for name in sorted(names)}

    monkeypatch.setattr(package, "score_capabilities", score_capabilities)
    bundle = SimpleNamespace(plugins=None, capabilities=["vision", "math", "voice"], model=lambda name: name.upper())
    scores = package._score(bundle, {}, 8, tmp_path)  # type: ignore[arg-type]
    assert scores == score_capabilities(None, bundle.capabilities, bundle.model, {}, 8, tmp_path)
    assert list(scores) == ["math", "vision", "voice"] and calls[:3] == [["math"], ["vision"], ["voice"]]
    err = capsys.readouterr().err
    assert "re-scoring the quantized student" in err and "3/3" in err
    counts = [line["capabilities"] for line in events() if line["event"] == "quantized student scored"]
    assert counts == ["1/3", "2/3", "3/3"]
