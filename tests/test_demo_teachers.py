"""End to end: `nexus teachers build` trains the four demo teachers from a fresh checkout to
their held-out minimums, and a second call finds them all cached. (Build times are figures for
the closing note and `nexus_demo.json`, not assertions: timing belongs in benchmarks/.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from kernel_helpers import HANG_GUARD, REPO, nexus

from nexus_kernel.teachers.demo import RECIPE_FILE

DEMO_TEACHERS = {"nexus-demo-reasoning": "MMLU", "nexus-demo-math": "GSM8K",
                 "nexus-demo-voice": "voice centroid accuracy", "nexus-demo-vision": "vision QA"}


@pytest.mark.slow
def test_teachers_build_trains_all_four_then_caches(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    built = nexus("teachers", "build", "--config", "configs/nexus.toml", cwd=tmp_path, timeout=2 * HANG_GUARD)
    assert built.returncode == 0, built.stderr
    for name, benchmark in DEMO_TEACHERS.items():
        folder = tmp_path / "models" / name
        marker = json.loads((folder / RECIPE_FILE).read_text())
        assert marker["scores"][benchmark]["value"] >= 0.9, (name, marker["scores"])
        assert marker["scores"][benchmark]["n"] >= 300
        assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
        assert not list(folder.glob("*.bin")), "weights must be safetensors only"
        assert f"{name} [" in built.stdout and "built in" in built.stdout
    weights = {path: path.read_bytes() for path in (tmp_path / "models").glob("*/model.safetensors")}
    again = nexus("teachers", "build", "--config", "configs/nexus.toml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("cached;") == 4
    assert {path: path.read_bytes() for path in weights} == weights
