"""`nexus run` end to end in a subprocess: lock refusal, relock, kill and resume, doctor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_helpers import install_fake_distribution, nexus, run_and_kill_when

pytestmark = pytest.mark.slow

DETERMINISTIC = ("configs/global_config.json", "configs/seed.txt", "configs/teacher_registry.json")

SLOW_PLUGIN = """
import os, pathlib, time
from nexus_kernel import Capability, hookimpl

@hookimpl
def register_capabilities():
    return [Capability("slowcap", "text", ("Slow",), ("GSM8K",))]  # scored like math (below)

@hookimpl
def resolve_datasets(capability, settings):
    marker = os.environ.get("SLOWCAP_MARKER")
    if marker:
        pathlib.Path(marker).write_text("in stage 0")
        time.sleep(120)
    return {"test": "synthetic:slowcap-v1"}

MATH = {"train": "synthetic:gsm8k-words-v1", "test": "synthetic:gsm8k-words-v1"}

@hookimpl
def profile_capability(capability, teacher, n_probe, datasets):
    from nexus_cap_math import teacher as math_teacher  # the slow teacher is a copy of the math one
    return math_teacher.probe_plan(teacher, n_probe, MATH)

@hookimpl
def distill_capability(capability, teacher, student, datasets):
    from nexus_cap_math import student as math_student
    return math_student.distill_plan(teacher, student, MATH)

@hookimpl
def retention_metric(capability, model, split, datasets, limit):
    from nexus_cap_math import student as math_student
    return math_student.score(model, split, MATH, limit)
"""


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_run_writes_artifacts_and_refuses_a_changed_config(project: Path) -> None:
    first = nexus("run", cwd=project)
    assert first.returncode == 0, first.stderr
    assert "2 profile       passed" in first.stdout
    assert "4 distill       passed" in first.stdout
    assert "7 cleanup       passed" in first.stdout
    run_dir = project / "runs" / "demo"
    lock = json.loads((run_dir / "configs/global_config.json").read_text())
    # knowledge is installed but has no demo teacher and no row in the default CSV: locked, not distilled
    assert sorted(lock["scope"]["capabilities"]) == ["knowledge", "math", "reasoning", "vision", "voice"]
    assert (run_dir / "configs/seed.txt").read_text() == "42\n"
    registry = json.loads((run_dir / "configs/teacher_registry.json").read_text())
    assert {t["name"]: t["capability"] for t in registry["teachers"]} == {
        "nexus-demo-reasoning": "reasoning", "nexus-demo-math": "math",
        "nexus-demo-voice": "voice", "nexus-demo-vision": "vision"}
    assert json.loads((run_dir / "env.json").read_text())["ok"] is True
    events = [json.loads(line) for line in (run_dir / "logs/events.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in events if e["event"] == "stage passed"] == [
        "stage -1 (doctor)", "stage 0 (lock)", "stage 1 (registry)", "stage 2 (profile)",
        "stage 3 (architecture)", "stage 4 (distill)", "stage 5 (validate)", "stage 6 (package)",
        "stage 7 (cleanup)"]
    for capability in ("math", "reasoning", "vision", "voice"):
        profile = json.loads((run_dir / f"niwt_stage2_output/{capability}/profile.json").read_text())
        assert profile["rank_audit"]["chosen_rank"] >= 1
        assert (run_dir / f"niwt_stage2_output/{capability}/basis.safetensors").is_file()

    _edit(project / "configs/nexus.toml", "memory_budget_gb = 16", "memory_budget_gb = 8")
    refused = nexus("run", cwd=project)
    assert refused.returncode == 2
    assert "the config changed since it was locked" in refused.stderr
    assert "hardware.memory_budget_gb: 16.0 -> 8.0" in refused.stderr
    assert "Rerun with --relock" in refused.stderr
    refused_only = nexus("run", "--only", "registry", cwd=project)
    assert refused_only.returncode == 2 and "--relock" in refused_only.stderr
    assert json.loads((run_dir / "configs/global_config.json").read_text()) == lock

    relocked = nexus("run", "--relock", "--to", "registry", cwd=project)
    assert relocked.returncode == 0, relocked.stderr
    assert "0 lock          passed" in relocked.stdout
    assert "1 registry      passed" in relocked.stdout
    new_lock = json.loads((run_dir / "configs/global_config.json").read_text())
    assert new_lock["scope"]["config"]["hardware"]["memory_budget_gb"] == 8.0

    again = nexus("run", "--to", "registry", cwd=project)
    assert "-1 doctor        skipped" in again.stdout and "1 registry      skipped" in again.stdout


def test_selected_plugins_distil_only_their_rows_of_the_csv(project: Path) -> None:
    csv_path = project / "configs/ModelName-Parameters-Category-BestFeature.csv"
    four_teachers = csv_path.read_text()
    csv_path.write_text(four_teachers + "acme-chem-7b,7B,Chemistry,molecules\n")
    unserved = nexus("run", "--plugins", "reasoning,voice", "--to", "registry", cwd=project)
    assert unserved.returncode == 2
    assert (f"{csv_path.name}: row 6, column 'Category': category 'Chemistry' is served by no selected "
            "plugin (the selected ones serve: Reasoning, Voice) nor by any installed unselected one "
            "(they serve: Knowledge, Math, Vision); install a plugin that serves it or remove the row") in unserved.stderr
    state = json.loads((project / "runs/demo/state.json").read_text())
    assert state["stages"]["registry"]["status"] == "failed"

    csv_path.write_text("".join(line + "\n" for line in four_teachers.splitlines()
                                if "nexus-demo-math" in line or "nexus-demo-vision" in line
                                or line.startswith("Model Name")))
    none_left = nexus("run", "--to", "registry", cwd=project, env={"NEXUS_PLUGINS": "reasoning,voice"})
    assert none_left.returncode == 2
    assert (f"{csv_path.name}: row 2: no teachers for the selected plugins (they serve: Reasoning, "
            "Voice); every row belongs to an unselected one: row 2 nexus-demo-math (Math, nexus-cap-math), "
            "row 3 nexus-demo-vision (Vision, nexus-cap-vision)") in none_left.stderr

    csv_path.write_text(four_teachers)
    result = nexus("run", "--plugins", "reasoning,voice", "--to", "distill", cwd=project)
    assert result.returncode == 0, result.stderr
    run_dir = project / "runs/demo"
    registry = json.loads((run_dir / "configs/teacher_registry.json").read_text())
    assert {t["name"]: t["capability"] for t in registry["teachers"]} == {
        "nexus-demo-reasoning": "reasoning", "nexus-demo-voice": "voice"}
    assert [(row["row"], row["name"], row["category"], row["plugin"]) for row in registry["skipped"]] == [
        (3, "nexus-demo-math", "Math", "nexus-cap-math"), (5, "nexus-demo-vision", "Vision", "nexus-cap-vision")]
    events = [json.loads(line) for line in (run_dir / "logs/events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["event"].startswith("left out")] == [
        "left out 2 CSV rows of unselected plugins: row 3 nexus-demo-math (Math, nexus-cap-math), "
        "row 5 nexus-demo-vision (Vision, nexus-cap-vision)"]
    lock = json.loads((run_dir / "configs/global_config.json").read_text())
    assert sorted(lock["scope"]["capabilities"]) == ["reasoning", "voice"]
    report = json.loads((run_dir / "distill_report.json").read_text())
    assert sorted(report["capabilities"]) == ["reasoning", "voice"]
    assert set(report["phases"]) == {"adapter-reasoning", "adapter-voice", "joint"}

    typo = nexus("run", "--plugins", "reasoning,voise", cwd=project)
    assert typo.returncode == 2 and "'voise' (did you mean 'voice'?)" in typo.stderr


def test_required_piece_missing_exits_non_zero_with_a_fix(project: Path) -> None:
    if subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(torch.cuda.is_available())"],
                      check=False).returncode:
        pytest.skip("this machine has CUDA; the missing-device case cannot be staged")
    _edit(project / "configs/nexus.toml", 'device = "auto"', 'device = "cuda"')
    result = nexus("run", cwd=project)
    assert result.returncode == 1
    assert "required pieces are missing" in result.stderr
    assert "hardware.device = 'cuda' but torch sees no CUDA device" in result.stderr
    assert "fix: set hardware.device" in result.stderr
    env = json.loads((project / "runs/demo/env.json").read_text())
    assert env["ok"] is False
    doctor = nexus("doctor", "--config", "configs/nexus.toml", cwd=project)
    assert doctor.returncode == 1 and "[ error ] device" in doctor.stdout


def _artifacts(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / name).read_text() for name in DETERMINISTIC}


def _stable_env(run_dir: Path) -> dict[str, object]:
    env = json.loads((run_dir / "env.json").read_text())
    # Free memory changes from one moment to the next: env.json, hashed by later stages, leaves it out.
    assert "ram_available_gb" not in env and not any("memory_free_gb" in device for device in env["devices"])
    return env


def test_sigkill_during_a_stage_then_rerun_matches_an_uninterrupted_run(
    project: Path, tmp_path: Path
) -> None:
    site = install_fake_distribution(tmp_path / "site", "slowcap-plugin", "slowcap", SLOW_PLUGIN)
    csv_path = project / "configs/ModelName-Parameters-Category-BestFeature.csv"
    csv_path.write_text(csv_path.read_text() + "slow-teacher,22M,Slow,waits\n")
    shutil.copytree(project / "models/nexus-demo-math", project / "models/slow-teacher")
    reference = nexus("run", "--run-dir", "runs/reference", "--to", "distill", cwd=project, extra_path=site)
    assert reference.returncode == 0, reference.stderr

    marker = tmp_path / "marker"
    run_and_kill_when(["run", "--run-dir", "runs/killed", "--to", "distill"], project, marker.exists, "stage 0",
                      extra_path=site, env={"SLOWCAP_MARKER": str(marker)}, poll=0.05)
    killed = project / "runs/killed"
    state = json.loads((killed / "state.json").read_text())
    assert state["stages"]["lock"]["status"] == "running"
    assert not (killed / "configs/teacher_registry.json").exists()

    resumed = nexus("run", "--run-dir", "runs/killed", "--to", "distill", cwd=project, extra_path=site)
    assert resumed.returncode == 0, resumed.stderr
    assert "-1 doctor        skipped" in resumed.stdout
    assert "0 lock          passed" in resumed.stdout
    assert _artifacts(killed) == _artifacts(project / "runs/reference")
    assert _stable_env(killed) == _stable_env(project / "runs/reference")
    lock = json.loads((killed / "configs/global_config.json").read_text())
    assert lock["datasets"]["slowcap"] == {"test": "synthetic:slowcap-v1"}
    assert not list(killed.rglob("*.tmp"))


TOY_PLUGIN = """
import json
from nexus_kernel import Capability, Score, hookimpl
from nexus_kernel.contracts import DemoTeacher

def build(folder, recipe, progress):
    progress(recipe["steps"])
    (folder / "config.json").write_text(json.dumps(recipe))
    return {"toy bench": Score.from_items("toy bench", [1.0, 1.0], 0.0)}

@hookimpl
def register_capabilities():
    return [Capability("toy", "text", ("Toy",), ("toy bench",))]

@hookimpl
def demo_teacher(capability, settings):
    return DemoTeacher("toy-demo", "toy", {"seed": 3, "steps": 5}, 5, build, "toy bench", 0.9)
"""


def test_run_builds_a_missing_demo_teacher_on_first_use_and_fails_clearly_without_one(
    project: Path, tmp_path: Path
) -> None:
    site = install_fake_distribution(tmp_path / "site", "toy-plugin", "toyplugin", TOY_PLUGIN, "toy")
    csv_path = project / "configs/ModelName-Parameters-Category-BestFeature.csv"
    csv_path.write_text("Model Name,Parameters,Category,Best Feature\ntoy-demo,1K,Toy,counting\n")
    first = nexus("run", "--plugins", "toy", cwd=project, extra_path=site)
    # Stage 1 builds the toy teacher; stage 2 cannot load it (not a transformers folder) and says so.
    assert first.returncode == 2, first.stderr
    assert "(1 demo teachers built)" in first.stderr
    assert "error: teacher 'toy-demo': " in first.stderr and "names architectures []" in first.stderr
    marker = json.loads((project / "models/toy-demo/nexus_demo.json").read_text())
    assert marker["scores"]["toy bench"]["value"] == 1.0
    registry = json.loads((project / "runs/demo/configs/teacher_registry.json").read_text())
    assert registry["demo_builds"]["toy-demo"]["scores"]["toy bench"]["n"] == 2

    cached = nexus("teachers", "build", "--plugins", "toy", cwd=project, extra_path=site)
    assert cached.returncode == 0 and "toy-demo [toy]: cached" in cached.stdout

    csv_path.write_text(csv_path.read_text() + "acme-toy-7b,7B,Toy,everything\n")
    missing = nexus("run", "--plugins", "toy", cwd=project, extra_path=site)
    assert missing.returncode == 2
    assert ("teacher 'acme-toy-7b' (toy): folder " in missing.stderr
            and "does not exist and no plugin can build it" in missing.stderr)
