"""The causal-LM teacher classes the kernel hooks, and where each keeps its decoder blocks.

`SUPPORTED_CAUSAL_LMS` is the one list: each class there runs through stages 1-6 in the
architecture matrix (`tests/test_architecture_matrix.py`: a tiny random-init model of the
class with its own trained tokenizer). `decoder_blocks` gives a causal LM's candidate layers
for profiling: the blocks at the class's known path, else (a class outside the list) the
model's longest `nn.ModuleList` when its blocks' outputs read as tensors. A model with no
such list, or whose blocks return something the hooks cannot read, is an
`UnsupportedTeacherError` naming its class and listing the supported ones.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nexus_kernel.algorithms.profiling import _first_tensor, repeated_blocks
from nexus_kernel.errors import NexusError

SUPPORTED_CAUSAL_LMS: dict[str, str] = {
    "LlamaForCausalLM": "model.layers",
    "Qwen2ForCausalLM": "model.layers",
    "MistralForCausalLM": "model.layers",
    "Phi3ForCausalLM": "model.layers",
    "GemmaForCausalLM": "model.layers",
    "GPT2LMHeadModel": "transformer.h",
    "GPTNeoXForCausalLM": "gpt_neox.layers",
}
"""Causal-LM class name -> the dotted path of its `nn.ModuleList` of decoder blocks."""


class UnsupportedTeacherError(NexusError):
    """A teacher's class has no decoder blocks the kernel can find or read."""


def supported_classes() -> str:
    """The supported causal-LM classes, for messages."""
    return ", ".join(SUPPORTED_CAUSAL_LMS)


def _unsupported(teacher: str, model: nn.Module, why: str) -> UnsupportedTeacherError:
    return UnsupportedTeacherError(
        f"teacher {teacher!r}: the kernel cannot hook {type(model).__name__}: {why}. Supported causal-LM "
        f"classes: {supported_classes()} (and others that keep their decoder blocks in one nn.ModuleList "
        "returning tensors); a plugin's profile_capability can name its own candidate layers")


def _blocks_at(model: nn.Module, path: str) -> list[str]:
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        return []
    return [f"{path}.{index}" for index in range(len(blocks))] if isinstance(blocks, nn.ModuleList) else []


def _check_outputs(model: nn.Module, blocks: list[str], teacher: str) -> None:
    """Run two tokens through `model` and check that every block ran and returned a tensor
    (or a tuple or output starting with one). A forward pass that fails is left to the
    caller (stage 2 tries the next quantization when a backend's kernel refuses it)."""
    import torch

    modules = dict(model.named_modules())
    seen: dict[str, Any] = {}

    def record(name: str, output: Any) -> None:
        seen.setdefault(name, output)

    handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
               for name in blocks]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    except Exception:  # not this check's business: see the docstring
        return
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name in blocks if name not in seen]
    if silent:
        raise _unsupported(teacher, model, f"its blocks {', '.join(silent[:3])} never run in a forward pass")
    unreadable = {name: type(out).__name__ for name, out in seen.items() if _first_tensor(out) is None}
    if unreadable:
        name, kind = next(iter(unreadable.items()))
        raise _unsupported(teacher, model, f"block {name!r} returns {kind}, not a tensor the hooks can read")


def decoder_blocks(model: nn.Module, teacher: str = "teacher") -> list[str]:
    """The names of a causal LM's decoder blocks (its candidate layers): the path
    `SUPPORTED_CAUSAL_LMS` gives for its class, else its longest `nn.ModuleList`, checked by
    one two-token forward pass; `UnsupportedTeacherError` when there is none to hook."""
    path = SUPPORTED_CAUSAL_LMS.get(type(model).__name__)
    blocks = _blocks_at(model, path) if path is not None else repeated_blocks(model)
    if not blocks:
        where = f"no nn.ModuleList of blocks at {path!r}" if path else "it keeps no decoder blocks in an nn.ModuleList"
        raise _unsupported(teacher, model, where)
    _check_outputs(model, blocks, teacher)
    return blocks
