"""Test helpers for Nexus and for authors of third-party plugins (a pytest plugin).

Installed with `nexus-kernel` under the `pytest11` entry point, so its fixtures are available in
any project that has the kernel installed:

- `nexus_run_dir`: an empty run directory in a temporary folder.
- `nexus_plugin_set`: a factory building a `PluginSet` from plugin objects you pass, with no
  entry-point discovery, so a test never depends on what happens to be installed.

and `check_capability_plugin(module)`, the conformance check every capability plugin runs
against itself.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from nexus_kernel.capability import Capability
from nexus_kernel.plugins import ENTRY_POINT_GROUP, PluginRecord, PluginSet


class ConformanceError(AssertionError):
    """A capability plugin breaks the plugin contract; the message says which rule."""


def plugin_set_of(*plugins: tuple[str, object]) -> PluginSet:
    """A `PluginSet` holding `(name, plugin)` pairs, each as if installed as `test-<name>`."""
    plugin_set = PluginSet()
    for name, plugin in plugins:
        plugin_set.add(PluginRecord(name, f"test-{name}", "0", repr(plugin)), plugin)
    return plugin_set


def _entry_point_targets(distribution: str) -> list[str]:
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ConformanceError(f"distribution {distribution!r} is not installed") from None
    return [ep.value.split(":")[0] for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]


def _imports_torch(module_name: str) -> bool:
    probe = f"import sys, {module_name}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if result.returncode not in (0, 3):
        raise ConformanceError(f"importing {module_name} failed:\n{result.stderr}")
    return result.returncode == 3


def check_capability_plugin(module: ModuleType, distribution: str | None = None) -> list[Capability]:
    """Check `module` against the plugin contract and return the capabilities it declares.

    Rules: every hookimpl names a real hook with valid arguments; `register_capabilities`
    returns `Capability` specs, at least one, none twice; importing the module does not import
    torch (plugins import heavy modules lazily); and, when `distribution` is given, that
    distribution is installed with an entry point of group `nexus` pointing at the module.
    """
    try:
        record = plugin_set_of((module.__name__, module)).loaded[0]
    except Exception as exc:
        raise ConformanceError(f"{module.__name__} does not register: {type(exc).__name__}: {exc}") from exc
    if not record.capabilities:
        raise ConformanceError(f"{module.__name__}: register_capabilities declares no capability")
    if _imports_torch(module.__name__):
        raise ConformanceError(f"importing {module.__name__} imports torch; import it inside functions")
    if distribution is not None and module.__name__ not in _entry_point_targets(distribution):
        raise ConformanceError(
            f"{distribution} has no entry point of group {ENTRY_POINT_GROUP!r} for {module.__name__}"
        )
    return list(record.capabilities)


@pytest.fixture
def nexus_run_dir(tmp_path: Path) -> Path:
    """An empty run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


@pytest.fixture
def nexus_plugin_set() -> Callable[..., PluginSet]:
    """`nexus_plugin_set(("name", plugin), ...)` builds a PluginSet from those plugins only."""
    return plugin_set_of
