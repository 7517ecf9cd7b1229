"""The example config `configs/smollm2-knowledge.toml` and its CSV: valid, and binding the user's
SmolLM2 folder (its documented relative path, or any path the CSV names) to knowledge."""

from __future__ import annotations

import shutil
from pathlib import Path

import nexus_cap_knowledge

from nexus_kernel.config import load_config
from nexus_kernel.teachers.registry import read_registry

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
KNOWLEDGE = {"knowledge": (nexus_cap_knowledge.CAPABILITY, "nexus-cap-knowledge")}


def test_the_example_names_smollm2_as_the_knowledge_teacher_and_cuts_the_student_from_it() -> None:
    from nexus_kernel.stages.distill import joint_phase_runs

    config = load_config(CONFIGS / "smollm2-knowledge.toml")
    (entry,) = read_registry(Path(config.section("registry")["csv"]), KNOWLEDGE,
                             Path(config.section("registry")["models_dir"]))
    assert (entry.name, entry.capability, entry.parameters) == ("SmolLM2-135M-Instruct", "knowledge", 135_000_000)
    assert Path(entry.path) == CONFIGS.parent / "models" / "SmolLM2-135M-Instruct"
    assert config.section("student")["backbone"] == "teacher:knowledge"
    assert 0 < config.section("student")["keep_layers"] < 30  # fewer blocks than SmolLM2's 30
    assert config.section("plugins")["enabled"] == ["knowledge"]
    # adapters only, backbone frozen
    assert not joint_phase_runs(config.section("student"), config.section("distill"))


def test_a_copy_can_point_at_any_folder(tmp_path: Path) -> None:
    """What a test (or a user) does to use the example with SmolLM2 elsewhere: change the Path."""
    from real_models import cache_root

    folder = cache_root() / "SmolLM2-135M-Instruct"  # need not exist: binding only reads the CSV
    shutil.copy(CONFIGS / "smollm2-knowledge.toml", tmp_path)
    text = (CONFIGS / "smollm2-knowledge.csv").read_text(encoding="utf-8")
    (tmp_path / "smollm2-knowledge.csv").write_text(text.replace("../models/SmolLM2-135M-Instruct", str(folder)))
    config = load_config(tmp_path / "smollm2-knowledge.toml")
    (entry,) = read_registry(Path(config.section("registry")["csv"]), KNOWLEDGE, tmp_path / "models")
    assert Path(entry.path) == folder
