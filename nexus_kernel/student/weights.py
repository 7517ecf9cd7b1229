"""The student's weights on disk: safetensors, written atomically.

A tensor shared by several names (a pretrained causal LM's tied input embedding and LM head)
is stored once, under its first name; the file's metadata lists the other names as
`aliases` (name -> stored name), and reading the file gives every name back. safetensors
itself refuses to store shared tensors twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from nexus_kernel.run.fsio import atomic_write_bytes

_ALIASES = "aliases"


def tensor_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """`state` as safetensors bytes, each shared tensor stored once (see the module docstring);
    a state without shared tensors gives exactly `safetensors.torch.save` of it."""
    from safetensors.torch import save

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for key, value in state.items():
        tensor = value.detach()
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and identity in seen:
            aliases[key] = seen[identity]
            continue
        seen[identity] = key
        stored[key] = tensor.contiguous()
    return save(stored, metadata={_ALIASES: json.dumps(aliases, sort_keys=True)} if aliases else None)


def tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Every named tensor of safetensors `data` (a file's bytes), aliases included."""
    import struct

    from safetensors.torch import load

    tensors = load(data)
    (header_size,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__") or {}
    aliases = json.loads(metadata.get(_ALIASES, "{}"))
    tensors.update({alias: tensors[stored] for alias, stored in aliases.items()})
    return tensors


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every named tensor of the safetensors file `path`, aliases included."""
    return tensors_from_bytes(path.read_bytes())


def save_weights(module: nn.Module, path: Path) -> None:
    """`module`'s state as safetensors, written atomically."""
    atomic_write_bytes(path, tensor_bytes(module.state_dict()))


def load_weights(module: nn.Module, path: Path) -> None:
    module.load_state_dict(read_tensors(path))
