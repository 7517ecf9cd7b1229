"""Fixtures and hypothesis profiles for the kernel's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from kernel_helpers import build_tiny_demo_teachers, tiny_project

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def tiny_demo_teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo teachers' architectures, trained for two steps (once per session)."""
    return build_tiny_demo_teachers(tmp_path_factory.mktemp("tiny-teachers"))


@pytest.fixture
def project(tmp_path: Path, tiny_demo_teachers: Path) -> Path:
    """A tiny project (`tiny_project`) in a temporary folder; returns its root."""
    return tiny_project(tmp_path, tiny_demo_teachers)
