"""A causal LM shipped as one GGUF file, turned into an ordinary `save_pretrained` folder.

transformers reads GGUF (`from_pretrained(..., gguf_file=...)`, with the `gguf` package) and
expands the weights to float32, but such a model refuses `save_pretrained`; a plain copy of it
built from its config saves as any teacher folder does (safetensors, tokenizer, chat template).
The folder is written beside its final place and renamed in one step, so an interrupted import
leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nexus_kernel.errors import NexusError


class GGUFImportError(NexusError):
    """A GGUF file is missing, unreadable, or not a causal LM transformers can build."""


def folder_from_gguf(gguf_path: Path, folder: Path, dtype: str = "bfloat16") -> Path:
    """Write the causal LM in `gguf_path` to `folder` (weights in `dtype`, its tokenizer and chat
    template beside them) unless `folder` already holds a `config.json`; returns `folder`."""
    if (folder / "config.json").is_file():
        return folder
    if not gguf_path.is_file():
        raise GGUFImportError(f"{gguf_path}: no such GGUF file")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise GGUFImportError(f"{gguf_path}: reading GGUF needs the `gguf` package (pip install gguf)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise GGUFImportError(f"{gguf_path}: transformers cannot read it as a causal LM "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    precision = getattr(torch, dtype)
    copy = AutoModelForCausalLM.from_config(config, dtype=precision)
    copy.load_state_dict(loaded.state_dict(), strict=True)
    copy.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        copy.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
