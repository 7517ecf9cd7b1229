"""The kernel's modules import each other without a cycle, imports inside functions included
(a cycle kept importable by deferring an import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import nexus_kernel

PACKAGE = "nexus_kernel"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module name to the kernel modules it imports, anywhere in its body. `from a import b`
    counts as importing `a.b` when that is a module, else `a`."""
    modules = {_module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == PACKAGE:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    edges.add(submodule if submodule in modules else node.module)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_kernel_has_no_import_cycle() -> None:
    graph = import_graph(Path(nexus_kernel.__file__).parent)
    assert len(graph) > 30  # the walk saw the whole kernel
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_finds_a_cycle_through_an_import_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / PACKAGE
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "stages" / "a.py").write_text("from nexus_kernel.stages import b\n")
    (package / "stages" / "b.py").write_text("def late():\n    from nexus_kernel.stages.a import x\n")
    (package / "c.py").write_text("import nexus_kernel.stages.a\n")
    cycle = find_cycle(import_graph(package))
    assert cycle == ["nexus_kernel.stages.a", "nexus_kernel.stages.b", "nexus_kernel.stages.a"]
