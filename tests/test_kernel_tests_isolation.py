"""The kernel's tests do not depend on which plugins are installed (STYLE.md point 7)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nexus_kernel.plugins import load_plugins

TESTS = Path(__file__).parent
SHIPPED_PLUGINS = ("nexus_cap_", "nexus_quant_")


def _top_level_imports(path: Path) -> list[str]:
    """Modules `path` imports when it is collected (its module body, not inside functions)."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_kernel_test_module_imports_a_shipped_plugin_when_collected() -> None:
    found = {path.name: name for path in sorted(TESTS.glob("*.py")) for name in _top_level_imports(path)
             if name.startswith(SHIPPED_PLUGINS)}
    assert found == {}, ("kernel test modules import shipped plugins at collection; import them in the "
                         f"test through kernel_helpers.require_plugins: {found}")


def test_entry_point_discovery_is_off_in_kernel_tests() -> None:
    with pytest.raises(AssertionError, match="a kernel test discovered the installed plugins"):
        load_plugins(None)
