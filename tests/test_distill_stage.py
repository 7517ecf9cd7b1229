"""Stages 3 and 4 end to end on the tiny demo teachers: architecture.json, the distillation
report, and a `nexus run` killed in the middle of stage 4 that resumes to the same weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from kernel_helpers import add_settings, nexus, run_and_kill_when
from safetensors import safe_open

pytestmark = pytest.mark.slow

CAPABILITIES = ["math", "reasoning", "vision", "voice"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_architecture_distillation_and_kill_resume(project: Path) -> None:
    add_settings(project / "configs/nexus.toml", "[capabilities.voice]\nalpha_scale = 0.02\n")  # the plugin declares 0.01
    reference = nexus("run", "--run-dir", "runs/reference", "--to", "distill", cwd=project)
    assert reference.returncode == 0, reference.stderr
    assert "4 distill       passed" in reference.stdout
    run_dir = project / "runs/reference"

    architecture = json.loads((run_dir / "architecture.json").read_text())
    assert sorted(architecture["capabilities"]) == CAPABILITIES
    layers = architecture["backbone"]["layers"]
    for name, entry in architecture["capabilities"].items():
        audit = json.loads((run_dir / f"niwt_stage2_output/{name}/profile.json").read_text())["rank_audit"]
        assert entry["rank"] == min(audit["intrinsic_dim"], audit["max_rank"]) == entry["adapter"]["rank"]
        key_layers = json.loads((run_dir / f"niwt_stage2_output/{name}/profile.json").read_text())["key_layers"]
        assert [pair["teacher"] for pair in entry["layer_map"]] == key_layers
        assert entry["adapter"]["anchored_layers"] == [pair["student"] for pair in entry["layer_map"]]
        assert all(0 <= layer < layers for layer in entry["adapter"]["anchored_layers"])
        assert entry["parameters"]["deltas"] > 0 and entry["shapes"]["anchor"] == [2, entry["rank"]]
    shapes = {name: entry["shapes"] for name, entry in architecture["capabilities"].items()}
    assert shapes["vision"]["prefix"] == [2, 5, 32, 32] and "logits" in shapes["vision"]
    assert shapes["voice"]["embedding"] == [2, 96] and "logits" not in shapes["voice"]
    assert "prefix" not in shapes["math"] and shapes["math"]["logits"][-1] == architecture["backbone"]["vocab_size"]

    report = json.loads((run_dir / "distill_report.json").read_text())
    assert set(report["phases"]) == {*(f"adapter-{name}" for name in CAPABILITIES), "joint"}
    for name in CAPABILITIES:
        entry = report["capabilities"][name]
        teacher = entry["teacher"][entry["benchmark"]]
        verdict = entry["retention"]
        near_chance = teacher["value"] <= teacher["chance"] + 0.1 * (1 - teacher["chance"])
        # Two-step teachers are at chance: retention must say so, never "pass".
        assert verdict["status"] == ("not measurable" if near_chance else verdict["status"])
        if near_chance:
            assert verdict["ratio"] is None
    # The demo student's vocabulary holds every text teacher's pieces: kl stays kl, and the
    # report says which output loss each capability used and why.
    assert {name: report["capabilities"][name]["output_loss"]["objective"] for name in CAPABILITIES} == {
        "math": "kl", "reasoning": "kl", "vision": "sequence", "voice": "cosine"}
    assert report["capabilities"]["reasoning"]["output_loss"]["why"].startswith(
        "kl: every teacher token is a student token")
    assert report["capabilities"]["voice"]["output_loss"]["why"].startswith(
        "cosine: the student's embedding head matches the teacher's utterance embedding ({'class': 'ASTForAudioClassification'")
    # Settings resolved once, at the lock (math declares pool_scale 2, voice alpha_scale 0.01):
    # stage 4 uses what the lock records.
    lock = json.loads((run_dir / "configs/global_config.json").read_text())
    assert {name: (entry["alpha_scale"], entry["pool_scale"]) for name, entry in lock["scope"]["capabilities"].items()} \
        == {"knowledge": (1.0, 1.0), "math": (1.0, 2.0), "reasoning": (1.0, 1.0), "vision": (1.0, 1.0),
            "voice": (0.02, 1.0)}
    pools = {name: safe_open(str(run_dir / f"checkpoints/{name}/pool.safetensors"), "pt").get_slice("coefficients")
             .get_shape()[0] for name in CAPABILITIES}
    assert pools == {"math": 96, "reasoning": 48, "vision": 48, "voice": 48}  # distill.pool_size 48
    journal = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    first = {e["phase"]: e for e in journal if e["kind"] == "step" and e["step"] == 0}
    assert first["adapter-voice"]["alpha"] == 10.0  # distill.alpha; voice's loss weighs its anchor 10 x 0.02
    assert first["adapter-voice"]["alpha_effective"] == {"voice": pytest.approx(0.2)}
    assert first["joint"]["alpha_effective"] == {"math": 10.0, "reasoning": 10.0, "vision": 10.0,
                                                 "voice": pytest.approx(0.2)}
    checks = {e["phase"]: e for e in journal if e["kind"] == "gradient_check"}
    assert set(checks) == set(report["phases"])
    assert checks["joint"]["backbone_frozen"] is False and checks["adapter-math"]["backbone_frozen"] is True
    assert list(checks["adapter-voice"]["norms"]) == ["adapters.voice"]

    pointer = project / "runs/killed/checkpoints/joint/latest.json"

    def joint_checkpointed() -> bool:
        return pointer.is_file() and json.loads(pointer.read_text() or "{}").get("step", 0) >= 3

    run_and_kill_when(["run", "--run-dir", "runs/killed", "--to", "distill"], project, joint_checkpointed, "a joint-phase checkpoint")
    killed = project / "runs/killed"
    assert json.loads((killed / "state.json").read_text())["stages"]["distill"]["status"] == "running"
    assert not (killed / "checkpoints/student.safetensors").exists()

    resumed = nexus("run", "--run-dir", "runs/killed", "--to", "distill", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 architecture  skipped" in resumed.stdout and "4 distill       passed" in resumed.stdout
    assert any(json.loads(line)["kind"] == "resume" for line in (killed / "training.jsonl").read_text().splitlines())
    assert _sha(killed / "checkpoints/student.safetensors") == _sha(run_dir / "checkpoints/student.safetensors")
    assert _sha(killed / "architecture.json") == _sha(run_dir / "architecture.json")
