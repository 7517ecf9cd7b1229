"""Nexus plugin `quant-bnb`: the `quantize` hook for NF4 and INT8 through bitsandbytes.

Every `nn.Linear` in the module is replaced by a bitsandbytes layer holding the same weights;
the quantization itself happens when the layer is moved to its device. If bitsandbytes is
missing or fails on this device the hook answers None, and the kernel's fallback is used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nexus_kernel import hookimpl

if TYPE_CHECKING:
    from torch import nn

SCHEMES = ("nf4", "int8")

log = logging.getLogger("nexus.quant_bnb")


def _quantized_linear(linear: nn.Linear, scheme: str) -> nn.Module:
    import bitsandbytes as bnb
    import torch

    weight = linear.weight.detach().to("cpu", torch.float32)
    has_bias = linear.bias is not None
    if scheme == "nf4":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  quant_type="nf4", compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.detach().to("cpu", torch.float32),
                                        requires_grad=False)
    return layer.to(linear.weight.device)


def quantize_linears(module: nn.Module, scheme: str) -> nn.Module:
    """Replace every `nn.Linear` inside `module` (in place) with its `scheme` equivalent."""
    from torch import nn

    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; quant-bnb supports {', '.join(SCHEMES)}")
    targets = [(name, child) for name, child in module.named_modules() if isinstance(child, nn.Linear)]
    for name, linear in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, _quantized_linear(linear, scheme))
    return module


@hookimpl
def quantize(module: nn.Module, scheme: str) -> nn.Module | None:
    if scheme not in SCHEMES:
        return None
    try:
        import bitsandbytes  # noqa: F401  (its absence means: let the kernel fall back)
    except ImportError:
        log.info("bitsandbytes is not installed; quant-bnb declines %s", scheme)
        return None
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return quantize_linears(module, scheme)
