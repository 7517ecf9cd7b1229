"""`nexus run` never loses or overwrites what it does not own, end to end in subprocesses on
the tiny teachers (a user's own folders, no demo marker): a kill while stage 5 has the teachers
moved away, teacher weights replaced in place, a second run on a held run directory, and a
dangerous `registry.models_dir`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernel_helpers import HANG_GUARD, file_hashes, nexus, run_and_kill_when

STAGES = ("doctor", "lock", "registry", "profile", "architecture", "distill", "validate", "package", "cleanup")


def _statuses(stdout: str) -> dict[str, str]:
    """Stage name to its status in `nexus run`'s summary."""
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in STAGES and parts[0].lstrip("-").isdigit():
            found[parts[1]] = parts[2] if parts[2] != "not" else "not run"
    return found


def _edit_config(project: Path, old: str, new: str) -> None:
    path = project / "configs/nexus.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_sigkill_in_stage_5_then_run_restores_the_users_teachers_byte_for_byte(project: Path) -> None:
    models = project / "models"
    before = file_hashes(models)
    first = nexus("run", "--to", "distill", cwd=project)
    assert first.returncode == 0, first.stderr
    away = models / ".nexus-demo-math.nexus-removed"
    run_and_kill_when(["run"], project, away.exists, "stage 5 moving the teachers away", poll=0.002)
    assert not (models / "nexus-demo-math").exists() and (project / "runs/demo/teachers_moved.json").is_file()

    rerun = nexus("run", cwd=project)
    assert rerun.returncode == 0, rerun.stderr
    assert "restored a teacher folder a killed run had moved away" in rerun.stderr
    statuses = _statuses(rerun.stdout)
    assert statuses["registry"] == "skipped" and statuses["validate"] == "passed", rerun.stdout
    assert file_hashes(models) == before  # every file of every teacher, byte for byte; nothing added
    assert not (project / "runs/demo/teachers_moved.json").exists()


@pytest.mark.slow
def test_weights_replaced_in_place_rerun_every_stage_after_the_lock(project: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    first = nexus("run", cwd=project)
    assert first.returncode == 0, first.stderr
    weights = project / "models/nexus-demo-reasoning/model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01 * torch.ones_like(tensors[name])
    status = weights.stat()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))  # even with the old mtime
    assert weights.stat().st_size == status.st_size

    rerun = nexus("run", cwd=project)
    assert rerun.returncode == 0, rerun.stderr
    statuses = _statuses(rerun.stdout)
    assert statuses == {"doctor": "skipped", "lock": "skipped", **{stage: "passed" for stage in STAGES[2:]}}, \
        rerun.stdout
    registry = json.loads((project / "runs/demo/configs/teacher_registry.json").read_text())
    assert len({entry["files_sha256"] for entry in registry["teachers"]}) == len(registry["teachers"])


@pytest.mark.slow
def test_a_second_run_on_the_same_run_directory_exits_2_naming_the_first(project: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "NEXUS_PLUGINS"}
    first = subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", "run", "--to", "architecture"], cwd=project,
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = project / "runs/demo/state.json"
    deadline = time.monotonic() + HANG_GUARD
    while not (state.is_file() and '"running"' in state.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never started a stage"
        time.sleep(0.05)
    try:
        second = nexus("run", "--to", "architecture", cwd=project)
        assert second.returncode == 2
        assert f"is in use by another nexus run (PID {first.pid}, started " in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        stdout, stderr = first.communicate(timeout=HANG_GUARD)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
    assert first.returncode == 0, stderr
    assert _statuses(stdout)["architecture"] == "passed"
    again = nexus("run", "--to", "architecture", cwd=project)  # the lock was released
    assert again.returncode == 0 and _statuses(again.stdout)["architecture"] == "skipped", again.stderr


@pytest.mark.parametrize(("models_dir", "reason"), [
    ("/", "is a filesystem root"),
    ("..", "is or holds the config file"),
])
def test_a_dangerous_models_dir_is_refused_before_anything_is_deleted(project: Path, models_dir: str,
                                                                      reason: str) -> None:
    stale = project / ".partial-nexus-demo-math-12345"  # what stage 1 deletes in models_dir: a stale build
    stale.mkdir()
    (stale / "keep.txt").write_text("mine")
    _edit_config(project, 'models_dir = "../models"', f'models_dir = "{models_dir}"')
    result = nexus("run", "--yes", cwd=project)
    assert result.returncode == 2
    shown = "/" if models_dir == "/" else str(project)  # the config's paths are resolved
    assert f"error: registry.models_dir = '{shown}' {reason}" in result.stderr, result.stderr
    assert (stale / "keep.txt").read_text() == "mine" and not (project / "runs").exists()
    built = nexus("teachers", "build", cwd=project)
    assert built.returncode == 2 and f"registry.models_dir = '{shown}' {reason}" in built.stderr
