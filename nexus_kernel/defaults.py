"""The kernel's own answers to the capability hooks, registered as a built-in plugin.

`load_plugins` registers this module under the name `nexus-kernel` before any entry point,
and every implementation here is `trylast`, so a capability's owner always answers first and
these run only when it returns None (the same pattern as llm's and datasette's default
plugins). Heavy modules are imported inside the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nexus_kernel.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nexus_kernel.capability import Capability
    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.teachers.registry import TeacherEntry

NAME = "nexus-kernel"
"""The built-in plugin's registered name (also what a bundle records for the kernel quantizer)."""


@hookimpl(trylast=True)
def load_teacher(entry: TeacherEntry, quantization: str, device: str) -> Any:
    """A local Hugging Face folder (the CSV's `Path`), loaded by its `architectures` class."""
    from pathlib import Path

    from nexus_kernel.teachers.loading import load_teacher_folder

    return load_teacher_folder(entry.name, Path(entry.path), quantization, device)


@hookimpl(trylast=True)
def build_adapter(capability: Capability, spec: AdapterSpec) -> nn.Module | None:
    """A text capability's adapter (no input projector); None for any other modality, whose
    owner must build the projector."""
    if spec.input_projector is not None:
        return None
    from nexus_kernel.student.model import CapabilityAdapter

    return CapabilityAdapter(spec)


@hookimpl(trylast=True)
def anchor_loss(student_hidden: torch.Tensor, teacher_coefficients: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the projected student state and the whitened coefficients."""
    from torch import nn

    return nn.functional.mse_loss(student_hidden, teacher_coefficients)


@hookimpl(trylast=True)
def quantize(module: nn.Module, scheme: str) -> nn.Module:
    """The kernel's own INT8 / NF4 layers, for when no plugin quantizes on this device."""
    from nexus_kernel.algorithms.quantize import kernel_quantize

    return kernel_quantize(module, scheme)
