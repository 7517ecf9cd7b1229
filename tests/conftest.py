"""Fixtures and hypothesis profiles for the kernel's tests."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from kernel_helpers import REPO

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# Two training steps and a handful of held-out items: real architectures, built in seconds.
_TINY_RECIPES = {
    "math": {"plan": {"steps": 2}, "data": {"test_size": 4}},
    "reasoning": {"plan": {"steps": 2}, "data": {"test_size": 4, "dev_size": 1}},
    "voice": {"plan": {"steps": 2}, "data": {"train_speakers": 2, "test_speakers": 1, "takes": 1}},
    "vision": {"plan": {"steps": 2}, "data": {"test_size": 4}},
}


TINY_DISTILL = """
# Tests: a few steps of each distillation phase on a small pool.
[distill]
adapter_steps = 6
joint_steps = 6
pool_size = 48
batch_size = 8
eval_samples = 8
checkpoint_every = 3
check_every = 3
"""


@pytest.fixture(scope="session")
def tiny_demo_teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo teachers' architectures, trained for two steps (once per session)."""
    root = tmp_path_factory.mktemp("tiny-teachers")
    for capability, overrides in _TINY_RECIPES.items():
        demo = importlib.import_module(f"nexus_cap_{capability}.teacher").demo()
        recipe = {key: {**value, **overrides.get(key, {})} if isinstance(value, dict) else value
                  for key, value in demo.recipe.items()}
        folder = root / demo.name
        folder.mkdir()
        demo.build(folder, recipe, lambda steps: None)
    return root


@pytest.fixture
def project(tmp_path: Path, tiny_demo_teachers: Path) -> Path:
    """A copy of the default configs in a temporary project folder, with tiny distillation
    settings (`TINY_DISTILL`); returns its root.

    Each teacher the CSV names is a copy of a tiny (two-step) build of its demo teacher, as a
    user's folder (no demo marker), so kernel tests run real stages but never train for long.
    """
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    with (tmp_path / "configs/nexus.toml").open("a") as config:
        config.write(TINY_DISTILL)
    csv_path = tmp_path / "configs/ModelName-Parameters-Category-BestFeature.csv"
    for row in csv.DictReader(csv_path.read_text().splitlines()):
        shutil.copytree(tiny_demo_teachers / row["Model Name"], tmp_path / "models" / row["Model Name"])
    return tmp_path
