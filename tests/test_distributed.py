"""The same run on two gloo processes under torchrun, against one process.

A tiny random-init LLaMA (`causal_zoo`) with its own tokenizer is the math teacher. Profiling
streams 5 batches (ranks 0 and 1 take turns, the last round rank 0 alone), the pool is 5
teacher batches (the same uneven split), and distillation trains the adapter phase and the
joint phase on batches of 8 (4 rows a rank). One thread per process in every run, so the
teacher's forward passes give the same bits in both, and the same memory budget per process
(the one process gets half of the two ranks' 16 GB machine). The runs go to `--to distill`.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from causal_zoo import SPECS, build_zoo_teacher
from kernel_helpers import HANG_GUARD, REPO, TINY_PROFILE_AND_STUDENT, nexus, require_plugins

pytestmark = pytest.mark.slow

RUN = """
[plugins]
enabled = ["math"]

[registry]
csv = "tiny.csv"
models_dir = "../models"
""" + TINY_PROFILE_AND_STUDENT.replace("samples = 32", "samples = 40") + """
[distill]
adapter_steps = 24
joint_steps = 6
pool_size = 160
batch_size = 8
eval_samples = 4
checkpoint_every = 3
check_every = 6
threads = 1
"""
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
STUDENT_TOLERANCE = 1e-3
"""Largest weight difference allowed between the one-process and the two-process student after
30 steps: the ranks' gradients are summed in another order than one process sums its batch.
Measured 2.6e-5 (DDP) and 4.9e-5 (FSDP2), each in one element of 800; the rest below 1e-5.
AdamW divides a gradient by its running scale, so an element whose gradient is near zero moves
by a share of the learning rate (3e-3) that the order of the sums decides: the bound is a third
of one step's. A wrong weighting of the loss terms shows in the losses, compared to 1e-5."""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher folder, the default configs, a one-row CSV and `configs/tiny.toml`."""
    require_plugins("nexus_cap_math")
    from nexus_cap_math import benchmark
    from nexus_cap_math.data import SyntheticRecipe

    root = tmp_path_factory.mktemp("distributed")
    texts = [f"{benchmark.prompt_of(p)} {p.answer}" for p in itertools.islice(SyntheticRecipe().train(), 300)]
    build_zoo_teacher(root / "models" / "tiny-llama", next(s for s in SPECS if s.architecture == "LlamaForCausalLM"),
                      texts)
    shutil.copytree(REPO / "configs", root / "configs")
    with (root / "configs" / "tiny.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Model Name", "Parameters", "Category", "Best Feature"])
        writer.writerow(["tiny-llama", "60K", "Math", "a random-init LLaMA"])
    (root / "configs" / "tiny.toml").write_text(RUN)
    # Two ranks of one machine plan with half the memory budget each (`process_budget`); the one
    # process gets the same share, so both choose and record alike.
    (root / "configs" / "tiny-one.toml").write_text(RUN + "\n[hardware]\nmemory_budget_gb = 8\n")
    (root / "configs" / "tiny-fsdp.toml").write_text(RUN.replace("threads = 1", 'threads = 1\nparallel = "fsdp"'))
    return root


def torchrun_command(run_dir: str, *extra: str, config: str = "configs/tiny.toml") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "nexus_kernel",
            "run", "--config", config, "--run-dir", run_dir, "--to", "distill", *extra]


def torchrun(project: Path, run_dir: str, *extra: str, config: str = "configs/tiny.toml"
             ) -> subprocess.CompletedProcess[str]:
    environment = {**{k: v for k, v in os.environ.items() if k != "NEXUS_PLUGINS"}, **ONE_THREAD}
    return subprocess.run(torchrun_command(run_dir, *extra, config=config), cwd=project, env=environment,
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)


def readings_removed(profile: dict) -> dict:
    """`profile.json` without what is read off the clock and the process (seconds, peak RSS)."""
    profile = json.loads(json.dumps(profile))
    profile.pop("seconds")
    profile["batching"].pop("peak_rss_mb")
    return profile


def student_difference(one: Path, two: Path) -> float:
    from safetensors.torch import load_file

    first = load_file(str(one / "checkpoints/student.safetensors"))
    second = load_file(str(two / "checkpoints/student.safetensors"))
    assert first.keys() == second.keys()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def steps_of(run_dir: Path) -> list[dict]:
    return [entry for line in (run_dir / "training.jsonl").read_text().splitlines()
            if (entry := json.loads(line))["kind"] == "step"]


@pytest.fixture(scope="module")
def runs(project: Path) -> dict[str, Path]:
    """One run in one process, the same run on two (DDP), and on two with FSDP2."""
    single = nexus("run", "--config", "configs/tiny-one.toml", "--run-dir", "runs/one", "--to", "distill",
                   cwd=project, env=ONE_THREAD)
    assert single.returncode == 0, single.stderr[-8000:]
    double = torchrun(project, "runs/two")
    assert double.returncode == 0, double.stderr[-8000:]
    sharded = torchrun(project, "runs/fsdp", config="configs/tiny-fsdp.toml")
    assert sharded.returncode == 0, sharded.stderr[-8000:]
    return {"one": project / "runs/one", "two": project / "runs/two", "fsdp": project / "runs/fsdp"}


def test_two_processes_profile_bit_for_bit_as_one(runs: dict[str, Path]) -> None:
    one, two = (runs[name] / "niwt_stage2_output/math" for name in ("one", "two"))
    assert (one / "basis.safetensors").read_bytes() == (two / "basis.safetensors").read_bytes()
    profile = readings_removed(json.loads((one / "profile.json").read_text()))
    assert profile == readings_removed(json.loads((two / "profile.json").read_text()))
    assert profile["layers"]["model.layers.0"]["vectors"] > 0


@pytest.mark.parametrize("parallel", ["two", "fsdp"])
def test_two_processes_train_the_student_one_process_trains(runs: dict[str, Path], parallel: str) -> None:
    one, two = runs["one"], runs[parallel]
    first, second = steps_of(one), steps_of(two)
    assert [(s["phase"], s["step"]) for s in first] == [(s["phase"], s["step"]) for s in second]
    assert {s["phase"] for s in first} == {"adapter-math", "joint"}
    for a, b in zip(first, second, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["math.output"] == pytest.approx(a["math.output"], rel=1e-5)
    # the loss moved, so equal students are not two untouched initialisations
    assert first[-1]["math.output"] < first[0]["math.output"] - 0.05
    assert student_difference(one, two) <= STUDENT_TOLERANCE
    pool_one = json.loads((one / "checkpoints/math/pool.json").read_text())
    pool_two = json.loads((two / "checkpoints/math/pool.json").read_text())
    assert pool_one["texts"] == pool_two["texts"] and len(pool_one["texts"]) == 320  # 5 teacher batches of 64
    follower = [json.loads(line) for line in (two / "logs/events.rank1.jsonl").read_text().splitlines()]
    assert [entry["stage"] for entry in follower if entry["event"] == "stage start"] == [
        "stage 2 (profile)", "stage 4 (distill)"]  # rank 1 takes part in the shared stages only


def test_fsdp_checkpoints_hold_whole_tensors_as_one_process_writes(runs: dict[str, Path]) -> None:
    from safetensors import safe_open

    def shapes(run_dir: Path) -> dict[str, list[int]]:
        latest = json.loads((run_dir / "checkpoints/joint/latest.json").read_text())["checkpoint"]
        with safe_open(str(run_dir / "checkpoints/joint" / latest / "state.safetensors"), "pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118

    expected = shapes(runs["one"])
    assert any(key.startswith("weights.backbone.") for key in expected)  # the joint phase trains the backbone
    assert shapes(runs["fsdp"]) == expected


def _rank_one_worker(launcher: subprocess.Popen[bytes]) -> int | None:
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == "1" and "nexus_kernel" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


@pytest.mark.parametrize(("parallel", "config"), [("two", "configs/tiny.toml"), ("fsdp", "configs/tiny-fsdp.toml")])
def test_a_killed_rank_fails_the_run_and_the_rerun_resumes_to_the_same_student(
        project: Path, runs: dict[str, Path], parallel: str, config: str) -> None:
    run_dir = project / f"runs/killed-{parallel}"
    environment = {**{k: v for k, v in os.environ.items() if k != "NEXUS_PLUGINS"}, **ONE_THREAD}
    launcher = subprocess.Popen(torchrun_command(f"runs/killed-{parallel}", config=config), cwd=project,
                                env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG_GUARD
    journal = run_dir / "training.jsonl"
    while not (journal.is_file() and any(s["step"] >= 10 for s in steps_of(run_dir))):
        assert launcher.poll() is None, "the run ended before step 10"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker = _rank_one_worker(launcher)
    assert worker is not None
    os.kill(worker, signal.SIGKILL)
    _, errors = launcher.communicate(timeout=HANG_GUARD)
    assert launcher.returncode != 0
    assert b"nexus_kernel" in errors and b"SIGKILL" in errors  # torchrun names the worker and its signal
    state = json.loads((run_dir / "state.json").read_text())
    assert state["stages"]["distill"]["status"] != "passed"
    killed_at = max(s["step"] for s in steps_of(run_dir) if s["phase"] == "adapter-math")
    assert killed_at < 23  # it stopped inside the adapter phase

    rerun = torchrun(project, f"runs/killed-{parallel}", config=config)
    assert rerun.returncode == 0, rerun.stderr[-8000:]
    kinds = [json.loads(line)["kind"] for line in journal.read_text().splitlines()]
    assert "resume" in kinds
    assert student_difference(runs[parallel], run_dir) == 0.0  # resuming is exact, as in one process


def test_a_leader_failure_outside_a_shared_stage_stops_every_rank_with_its_message(project: Path) -> None:
    result = nexus("run", "--config", "configs/tiny.toml", "--run-dir", "runs/refused", "--only", "package",
                   "--nproc", "2", cwd=project, env=ONE_THREAD)
    assert result.returncode == 1  # the stage error's own code, not torchrun's
    assert "error: --only package: stage -1 (doctor) is not up to date" in result.stderr
    assert "error: rank 1: stopped, rank 0 failed: --only package" in result.stderr
    assert "error: rank 0 of 2 exited with code 1" in result.stderr or "error: rank 1 of 2 exited with code 1" in (
        result.stderr)
    assert "Traceback" not in result.stderr


def test_a_shared_stage_failing_on_every_rank_ends_each_with_its_message(project: Path) -> None:
    (project / "configs/tiny-one-row.toml").write_text(RUN.replace("batch_size = 8", "batch_size = 1"))
    result = nexus("run", "--config", "configs/tiny-one-row.toml", "--run-dir", "runs/one-row", "--to", "distill",
                   "--nproc", "2", cwd=project, env=ONE_THREAD)
    assert result.returncode == 1, result.stderr[-8000:]
    refusal = "distill.batch_size = 1 is the whole batch of a step, shared among 2 processes"
    assert result.stderr.count(refusal) >= 2  # both ranks refuse in stage 4, neither waits for the other
    assert "Traceback" not in result.stderr
    state = json.loads((project / "runs/one-row/state.json").read_text())
    assert state["stages"]["profile"]["status"] == "passed"
    assert state["stages"]["distill"]["status"] == "failed"


def test_a_rank_waiting_past_the_timeout_stops_with_a_clear_error(tmp_path: Path) -> None:
    import socket

    import rank_workers
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(rank_workers.waiting_past_the_timeout, args=(port, str(tmp_path)), nprocs=rank_workers.WORLD_SIZE)
    kind, code, message = (tmp_path / "outcome.txt").read_text().split("|", 2)
    assert (kind, code) == ("DistributedError", "1")
    assert message.startswith("rank 1: waiting for word from rank 0 failed: another rank stopped, or did not get "
                              "there within 0.05 minutes (NEXUS_DIST_TIMEOUT_MINUTES)")


def test_nproc_starts_torchrun_for_the_same_command(project: Path) -> None:
    result = nexus("run", "--config", "configs/tiny.toml", "--run-dir", "runs/nproc", "--to", "lock", "--nproc", "2",
                   cwd=project, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-8000:]
    state = json.loads((project / "runs/nproc/state.json").read_text())
    assert state["stages"]["lock"]["status"] == "passed"
    assert (project / "runs/nproc/logs/events.rank1.jsonl").is_file()  # a second process took part


def test_one_process_world_is_the_identity() -> None:
    from nexus_kernel.run import distributed

    here = distributed.world()
    assert (here.rank, here.size, here.main, here.active) == (0, 1, True, False)
    assert here.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.gather_in_order([4, 5], 2) == [4, 5]
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert float(distributed.all_sum(torch.ones(2)).sum()) == 2.0
    assert distributed.World(rank=1, size=2).shard(list(range(5))) == [1, 3]
