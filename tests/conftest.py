"""Fixtures and hypothesis profiles for the kernel's tests.

The kernel's tests never depend on which plugins are installed: they register test plugins
(`nexus_kernel.kit.testing.plugin_set_of`), and entry-point discovery is off for them
(`no_entry_points`). Only the end-to-end fixtures below run the shipped capability plugins,
and they skip when one is not installed (`kernel_helpers.require_plugins`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import settings
from kernel_helpers import add_settings, build_tiny_demo_teachers, nexus, tiny_project

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def no_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, `nexus` entry points are never discovered: a kernel test that loads
    plugins passes its own (`load_plugins(entry_points=...)`), like pytest's
    PYTEST_DISABLE_PLUGIN_AUTOLOAD. CLI runs in a subprocess (`kernel_helpers.nexus`) see what
    is installed."""
    from importlib import metadata

    real = metadata.entry_points

    def entry_points(**selection: str) -> object:
        if selection.get("group") == "nexus":
            raise AssertionError("a kernel test discovered the installed plugins; pass entry_points= "
                                 "or use nexus_kernel.kit.testing.plugin_set_of")
        return real(**selection)

    monkeypatch.setattr(metadata, "entry_points", entry_points)


@pytest.fixture(scope="session")
def tiny_demo_teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo teachers' architectures, trained for two steps (once per session)."""
    return build_tiny_demo_teachers(tmp_path_factory.mktemp("tiny-teachers"))


@pytest.fixture
def project(tmp_path: Path, tiny_demo_teachers: Path) -> Path:
    """A tiny project (`tiny_project`) in a temporary folder; returns its root."""
    return tiny_project(tmp_path, tiny_demo_teachers)


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory: pytest.TempPathFactory,
                      tiny_demo_teachers: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A tiny project after one whole `nexus run --run-dir runs/r` (once per session), with
    `cleanup.delete_user_teachers` on, and that run's result. Its bundle is
    `bundles/nexus_bundle_v1`; tests that change the project (`test_pipeline_end`) leave the
    bundle as it was."""
    project = tiny_project(tmp_path_factory.mktemp("finished"), tiny_demo_teachers)
    # The tiny teachers are the user's own folders: --yes deletes them only when asked to.
    add_settings(project / "configs/nexus.toml", "[cleanup]\ndelete_user_teachers = true\n")
    return project, nexus("run", "--run-dir", "runs/r", cwd=project)
