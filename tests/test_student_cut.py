"""A student cut from its teacher (`student.backbone = "teacher:<capability>"`) through stages 1-6."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_helpers import add_settings, nexus, require_plugins

pytestmark = pytest.mark.slow


def test_a_student_cut_from_the_math_teacher_trains_adapters_only_and_packages(project: Path) -> None:
    require_plugins("nexus_cap_math")
    add_settings(project / "configs/nexus.toml", '[student]\nbackbone = "teacher:math"\nkeep_layers = 1\n')
    result = nexus("run", "--plugins", "math", "--to", "6", "--run-dir", "runs/cut", cwd=project)
    assert result.returncode == 0, result.stderr
    run_dir = project / "runs/cut"
    profile = json.loads((run_dir / "niwt_stage2_output/math/profile.json").read_text())
    assert set(profile["removal"]["loss_increase"]) == set(profile["ablation"]["loss_increase"])
    top = profile["removal"]["ranking"][0]
    architecture = json.loads((run_dir / "architecture.json").read_text())
    backbone = architecture["backbone"]
    assert backbone["kind"] == "teacher" and backbone["layers"] == 1 and backbone["class"] == "LlamaForCausalLM"
    cut = backbone["cut"]
    assert cut["capability"] == "math" and cut["teacher"] == "nexus-demo-math" and cut["teacher_layers"] == 2
    assert cut["kept_layers"] == [int(top.rsplit(".", 1)[1])]  # the block whose removal hurt most
    # A key layer that was kept anchors the very block cut from it (block 0 of 1).
    for pair in architecture["capabilities"]["math"]["layer_map"]:
        if pair["teacher"] == top:
            assert pair["student"] == 0
    teacher_config = json.loads((project / "models/nexus-demo-math/config.json").read_text())
    student_config = json.loads((run_dir / "student/backbone/config.json").read_text())
    assert student_config["num_hidden_layers"] == 1
    assert student_config["vocab_size"] == teacher_config["vocab_size"]  # the teacher's own tokenizer
    report = json.loads((run_dir / "distill_report.json").read_text())
    assert list(report["phases"]) == ["adapter-math"]  # distill.joint = auto: a pretrained backbone stays frozen
    pool = json.loads((run_dir / "checkpoints/math/pool.json").read_text())
    assert pool["objective"] == "kl"  # the student's tokenizer is the teacher's
    bundle = project / "bundles/nexus_bundle_v1"
    assert json.loads((bundle / "backbone/config.json").read_text())["num_hidden_layers"] == 1


def test_a_cut_from_a_capability_without_a_teacher_is_a_clear_error(project: Path) -> None:
    require_plugins("nexus_cap_math")
    add_settings(project / "configs/nexus.toml", '[student]\nbackbone = "teacher:vision"\n')
    result = nexus("run", "--plugins", "math", "--to", "3", "--run-dir", "runs/nocut", cwd=project)
    assert result.returncode != 0
    assert "student.backbone = 'teacher:vision': no capability 'vision' was profiled (profiled: math)" in result.stderr
    assert "Traceback" not in result.stderr
