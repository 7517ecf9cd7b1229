"""Fixtures and hypothesis profiles for the kernel's tests."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from kernel_helpers import REPO

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the default configs in a temporary project folder; returns its root.

    Each teacher the CSV names gets an empty stand-in folder (a user's folder: no demo build
    marker), so runs in kernel tests never train the demo teachers.
    """
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    csv_path = tmp_path / "configs/ModelName-Parameters-Category-BestFeature.csv"
    for row in csv.DictReader(csv_path.read_text().splitlines()):
        (tmp_path / "models" / row["Model Name"]).mkdir(parents=True)
    return tmp_path
