"""Quantization for packaging: the `quantize` hook first, the kernel's own layers otherwise.

`quantize_module(plugins, module, scheme)` asks the plugins' `quantize` implementations in
pluggy's call order and keeps the first answer, recording which plugin gave it (a bundle must
be loaded back by the same quantizer, and a `firstresult` call does not say who answered, so
the implementations are walked one by one). The kernel's fallback is the last of them (the
built-in `nexus_kernel.defaults.quantize`, `trylast`): when no plugin answers (bitsandbytes
missing, or unsupported on the device) it replaces every `nn.Linear` with `Int8Linear`
(per-row absmax) or `NF4Linear` (blocks of 64, the NF4 code book). Every quantized module's
`state_dict()` holds tensors only and loads back into a module built and quantized the same way,
which is how `load_bundle` restores a bundle.

Token and position tables are not linears, so no quantizer above sees them: a pretrained
student's 49,152 x 576 vocabulary is 113 MB of float32, more than its blocks' int8 weights.
`quantize_embeddings` stores them as `Int8Embedding` (per-row absmax) under either scheme: a
lookup reads single rows, so 4-bit rows would cost accuracy where 8-bit already makes the
table a quarter of its float size (bitsandbytes' own `Embedding8bit` cannot save its state in
0.50.2, so the kernel's layer serves every quantizer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pluggy
import torch
from torch import nn

from nexus_kernel.errors import NexusError


class PluginSet(Protocol):
    """What quantization needs of `nexus_kernel.plugins.PluginSet` (not imported: the kernel's
    built-in plugin imports this module)."""

    manager: pluggy.PluginManager

SCHEMES = ("int8", "nf4")
KERNEL = "nexus-kernel"  # the name `nexus_kernel.defaults` is registered under
NF4_BLOCK = 64
# The 16 levels of NF4 (normal-float 4-bit; Dettmers et al. 2023), as bitsandbytes uses them.
NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
])


class QuantizationError(NexusError):
    """An unknown scheme, or a quantizer that returned something unusable."""


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` as int8 rows and one float scale per row (per-row absmax)."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def replace_modules(module: nn.Module, names: list[str], make: Callable[[nn.Module], nn.Module]) -> None:
    """Replace each named submodule of `module` (in place) with `make(submodule)`."""
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, make(getattr(parent, attribute)))


class Int8Linear(nn.Module):
    """A linear layer stored as int8 rows with one float scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        qweight, scale = int8_rows(linear.weight)
        layer.qweight.copy_(qweight)
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())  # type: ignore[union-attr]
        return layer

    def weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, self.weight(), self.bias)


class NF4Linear(nn.Module):
    """A linear layer stored as 4-bit NF4 codes (two per byte) with one absmax per block."""

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        count = in_features * out_features
        blocks = -(-count // NF4_BLOCK)
        self.register_buffer("packed", torch.zeros(-(-count // 2), dtype=torch.uint8))
        self.register_buffer("absmax", torch.ones(blocks))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> NF4Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        flat = linear.weight.detach().float().flatten()
        padded = nn.functional.pad(flat, (0, layer.absmax.numel() * NF4_BLOCK - flat.numel())).view(-1, NF4_BLOCK)
        absmax = padded.abs().amax(dim=1).clamp(min=1e-12)
        codes = (padded / absmax[:, None]).unsqueeze(-1).sub(NF4_CODE).abs().argmin(dim=-1).flatten()[: flat.numel()]
        codes = nn.functional.pad(codes, (0, codes.numel() % 2)).to(torch.uint8)
        layer.packed.copy_(codes[0::2] << 4 | codes[1::2])
        layer.absmax.copy_(absmax)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())  # type: ignore[union-attr]
        return layer

    def weight(self) -> torch.Tensor:
        codes = torch.stack([self.packed >> 4, self.packed & 0x0F], dim=1).flatten().long()
        count = self.in_features * self.out_features
        values = NF4_CODE[codes][: self.absmax.numel() * NF4_BLOCK]
        values = nn.functional.pad(values, (0, self.absmax.numel() * NF4_BLOCK - values.numel()))
        scaled = (values.view(-1, NF4_BLOCK) * self.absmax[:, None]).flatten()[:count]
        return scaled.view(self.out_features, self.in_features)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, self.weight(), self.bias)


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row; a lookup
    dequantizes only the rows it reads."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        layer = cls(embedding.num_embeddings, embedding.embedding_dim)
        qweight, scale = int8_rows(embedding.weight)
        layer.qweight.copy_(qweight)
        layer.scale.copy_(scale)
        return layer.to(embedding.weight.device)

    def weight(self) -> torch.Tensor:
        """The whole table in float: what every lookup reads, row for row."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.qweight[ids].float() * self.scale[ids].unsqueeze(-1)


def quantize_embeddings(module: nn.Module) -> list[str]:
    """Replace every plain `nn.Embedding` inside `module` (in place) with `Int8Embedding`;
    returns their names. Subclasses (which may scale or post-process a lookup, as Gemma 3's
    does) and tables with `max_norm` keep their float weights."""
    names = [name for name, child in module.named_modules()
             if type(child) is nn.Embedding and child.max_norm is None and name]
    replace_modules(module, names, Int8Embedding.from_embedding)  # type: ignore[arg-type]
    return names


_KERNEL_LAYERS: dict[str, type[Int8Linear] | type[NF4Linear]] = {"int8": Int8Linear, "nf4": NF4Linear}


def kernel_quantize(module: nn.Module, scheme: str) -> nn.Module:
    """The kernel's fallback: every `nn.Linear` inside `module` replaced in place."""
    if scheme not in _KERNEL_LAYERS:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    layer_class = _KERNEL_LAYERS[scheme]
    if isinstance(module, nn.Linear):
        return layer_class.from_linear(module)
    replace_modules(module, [name for name, child in module.named_modules() if isinstance(child, nn.Linear)],
                    layer_class.from_linear)  # type: ignore[arg-type]
    return module


def quantize_module(plugins: PluginSet | None, module: nn.Module, scheme: str,
                    quantizer: str | None = None) -> tuple[nn.Module, str]:
    """`module` quantized with `scheme` and the name of who did it (a plugin's name, or
    `KERNEL`). With `quantizer` given (a bundle being loaded), only that one is asked, so the
    layers match the saved state; a missing plugin is an error naming it."""
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if quantizer == KERNEL or plugins is None:
        if quantizer not in (None, KERNEL):
            raise QuantizationError(f"this bundle was quantized by plugin {quantizer!r}, which is not loaded")
        return kernel_quantize(module, scheme), KERNEL
    manager = plugins.manager
    implementations = list(reversed(manager.hook.quantize.get_hookimpls()))  # pluggy's call order
    for implementation in implementations:
        if quantizer is not None and implementation.plugin_name != quantizer:
            continue
        others = [plugin for plugin in manager.get_plugins() if plugin is not implementation.plugin]
        answer = manager.subset_hook_caller("quantize", remove_plugins=others)(module=module, scheme=scheme)
        if answer is not None:
            if not isinstance(answer, nn.Module):
                raise QuantizationError(f"plugin {implementation.plugin_name!r} answered quantize with "
                                        f"{type(answer).__name__}, not an nn.Module")
            return answer, implementation.plugin_name
    if quantizer is not None:
        raise QuantizationError(f"this bundle was quantized by plugin {quantizer!r}, which is not loaded "
                                "or declines the scheme on this machine")
    return kernel_quantize(module, scheme), KERNEL


