"""CONTRIBUTING.md's worked examples, typed out as written: each installs with pip and passes
the conformance kit, so the page a plugin author copies from stays true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"```(?:python|toml)\n# file: (?P<path>\S+)\n(?P<body>.*?)```", re.S)
EXAMPLES = {"acme-cap-chemistry": "acme_cap_chemistry", "acme-cap-sentences": "acme_cap_sentences",
            "acme-cap-glyphs": "acme_cap_glyphs"}


def example_files() -> dict[str, str]:
    """Relative path to text of every `# file:` block in CONTRIBUTING.md."""
    return {match["path"]: match["body"] for match in _BLOCK.finditer((REPO / "CONTRIBUTING.md").read_text())}


def write_examples(root: Path) -> Path:
    for relative, body in example_files().items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
    return root


def install(project: Path, site: Path) -> None:
    """`pip install --no-deps` into `site` (its dependencies are the installed kernel and helpers)."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", "--target", str(site), str(project)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_the_page_has_every_file_of_three_packages() -> None:
    files = set(example_files())
    for distribution, module in EXAMPLES.items():
        assert {f"{distribution}/pyproject.toml", f"{distribution}/src/{module}/__init__.py",
                f"{distribution}/src/{module}/teacher.py", f"{distribution}/src/{module}/student.py"} <= files


@pytest.mark.slow
def test_the_worked_examples_install_and_pass_the_conformance_kit(tmp_path: Path) -> None:
    pytest.importorskip("nexus_modalities", reason="the examples import nexus-modalities")
    root = write_examples(tmp_path / "examples")
    site = tmp_path / "site"
    for distribution in EXAMPLES:
        install(root / distribution, site)
    probe = ("import importlib, json, sys\n"
             "from nexus_kernel.kit.testing import check_capability_plugin\n"
             "found = {}\n"
             f"for distribution, module in {EXAMPLES!r}.items():\n"
             "    plugin = importlib.import_module(module).plugin\n"
             "    found[distribution] = [(c.name, c.modality, c.output) for c in\n"
             "                           check_capability_plugin(plugin, distribution=distribution)]\n"
             "print(json.dumps(found))\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environment,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        '{"acme-cap-chemistry": [["chemistry", "text", "text"]], '
        '"acme-cap-sentences": [["sentences", "text", "embedding"]], '
        '"acme-cap-glyphs": [["glyphs", "image", "embedding"]]}')
