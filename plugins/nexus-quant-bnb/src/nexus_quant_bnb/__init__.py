"""Nexus plugin `quant-bnb`: the `quantize` hook for NF4 and INT8 through bitsandbytes.

Every `nn.Linear` in the module is replaced by a bitsandbytes layer holding the same weights;
the quantization itself happens when the layer is moved to its device. If bitsandbytes is
missing or fails on this device the hook answers None, and the kernel's fallback is used.

The quantized module's `state_dict()` holds only tensors and loads back into a module built
the same way (the round trip a bundle relies on): INT8 layers read their `SCB` scales
natively; NF4 layers get a load hook that rebuilds their packed weight and quant state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

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
        layer._register_load_state_dict_pre_hook(_load_prequantized_nf4, with_module=True)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.detach().to("cpu", torch.float32),
                                        requires_grad=False)
    return layer.to(linear.weight.device)


def _load_prequantized_nf4(layer: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Turn the `weight` + `weight.*` entries an NF4 layer saved back into its packed weight."""
    import bitsandbytes as bnb

    stats = {key[len(prefix) + len("weight."):]: state_dict.pop(key) for key in list(state_dict)
             if key.startswith(prefix + "weight.")}
    if stats and prefix + "weight" in state_dict:
        layer.weight = bnb.nn.Params4bit.from_prequantized(
            data=state_dict[prefix + "weight"], quantized_stats=stats, requires_grad=False,
            device=layer.weight.device, module=layer)


def quantize_linears(module: nn.Module, scheme: str) -> nn.Module:
    """Replace every `nn.Linear` inside `module` (in place) with its `scheme` equivalent."""
    from torch import nn

    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; quant-bnb supports {', '.join(SCHEMES)}")
    from nexus_kernel.algorithms.quantize import replace_modules

    replace_modules(module, [name for name, child in module.named_modules() if isinstance(child, nn.Linear)],
                    lambda linear: _quantized_linear(linear, scheme))  # type: ignore[arg-type]
    return module


def unsupported_layers(module: nn.Module, scheme: str) -> list[str]:
    """Linears bitsandbytes cannot run with `scheme` on their device: its CPU NF4 kernel packs
    output rows in blocks of 32 and input columns in pairs."""
    from torch import nn

    if scheme != "nf4":
        return []
    return [name or type(child).__name__ for name, child in module.named_modules()
            if isinstance(child, nn.Linear) and child.weight.device.type == "cpu"
            and (child.out_features % 32 or child.in_features % 2)]


@hookimpl
def quantize(module: nn.Module, scheme: str) -> nn.Module | None:
    if scheme not in SCHEMES:
        return None
    unsupported = unsupported_layers(module, scheme)
    if unsupported:
        log.info("quant-bnb declines %s: bitsandbytes cannot run %s on this device", scheme, ", ".join(unsupported[:3]))
        return None
    # Its CPU backend warns at import about an optional kernel download we never use.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401  (its absence means: let the kernel fall back)
    except ImportError:
        log.info("bitsandbytes is not installed; quant-bnb declines %s", scheme)
        return None
    return quantize_linears(module, scheme)
