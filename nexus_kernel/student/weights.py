"""The student's weights on disk: safetensors, written atomically."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from nexus_kernel.run.fsio import atomic_write_bytes


def save_weights(module: nn.Module, path: Path) -> None:
    """`module`'s state as safetensors, written atomically."""
    from safetensors.torch import save

    state = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
    atomic_write_bytes(path, save(state))


def load_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))
