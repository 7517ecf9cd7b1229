"""Fixtures and hypothesis profiles for the kernel's tests."""

from __future__ import annotations

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
    """A copy of the default configs in a temporary project folder; returns its root."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path
