"""A bundle as the ecosystem reads it: a transformers folder plus one PEFT LoRA adapter per
capability (`nexus export BUNDLE --format hf OUT`).

`export_hf(bundle, out)` loads the bundle (checksums first, as `nexus infer` does) and writes:

- `backbone/`: a `save_pretrained` folder (config, `model.safetensors`, tokenizer,
  `generation_config.json` with the tokenizer's EOS and greedy decoding). Linears quantized by
  bitsandbytes int8 stay its int8 rows and `SCB` scales, with a bitsandbytes
  `quantization_config` (`llm_int8_skip_modules: []`, so the LM head is int8 as in the bundle):
  `from_pretrained` rebuilds the same `Linear8bitLt` layers and computes what `nexus infer`
  computes. Any other quantized layer (the kernel's int8 and NF4, bitsandbytes NF4), and the
  kernel's int8 embedding tables, are written as the float weights they dequantize to, which is
  what those layers multiply with. The LM head is always its own tensor (no tying).
- `adapters/<name>/adapter_config.json` + `adapter_model.safetensors`: a PEFT LoRA adapter with
  `r` = the adapter's rank, `lora_alpha` = `r` (scaling 1), no dropout, the targets by full
  module name; `lora_A` is the delta's `down`, `lora_B` its `up`, as float32. Nexus adds
  `up(down(x))` to each target's output, which is what PEFT's LoRA layer adds.
- `adapters/<name>/parts.safetensors` + `parts.json`, for a capability with more than the
  adapter: the input projector (`projector.*`), the embedding head (`head.*`) and the packaged
  assets (`assets.*`, e.g. class centroids), float, with what reads them (README: "Serving
  without Nexus").
- `nexus_export.json`: the source bundle, the capabilities, and every file's size and sha256.

The folder is written next to `out` and renamed into place. An existing `out` is replaced only
when it is an earlier export (it holds `nexus_export.json`); any other existing folder that is
not empty is refused, never overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.errors import NexusError

EXPORT_MANIFEST = "nexus_export.json"
BACKBONE = "backbone"
BNB_INT8_QUANTIZER = "quant-bnb"


class ExportError(NexusError):
    """An export that cannot be written: the message names the folder or the module."""


def _hf_safetensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes as transformers and PEFT write them (`format: pt`; no shared-tensor
    aliases, unlike the bundle's `weights.tensor_bytes`)."""
    from safetensors.torch import save

    return save(dict(tensors), metadata={"format": "pt"})


def _bnb_layer(layer: nn.Module, kind: str) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(layer, getattr(bnb.nn, kind))


def float_linear_weight(layer: nn.Module) -> torch.Tensor | None:
    """The float weight `(out, in)` a linear layer multiplies with: an `nn.Linear`'s own, the
    kernel's `Int8Linear`/`NF4Linear` dequantized, bitsandbytes' int8 and NF4 dequantized;
    None for a module that is not one of these."""
    from nexus_kernel.algorithms.quantize import Int8Linear, NF4Linear

    if type(layer) is nn.Linear:
        return layer.weight.detach().float().clone()
    if isinstance(layer, Int8Linear | NF4Linear):
        return layer.weight().detach().float()
    if _bnb_layer(layer, "Linear8bitLt"):
        weight = layer.weight  # type: ignore[union-attr]
        return weight.data.float() * weight.SCB.float()[:, None] / 127  # type: ignore[union-attr]
    if _bnb_layer(layer, "Linear4bit"):
        return _bnb_nf4_weight(layer.weight)  # type: ignore[union-attr]
    return None


def _bnb_nf4_weight(weight: Any) -> torch.Tensor:
    """A bitsandbytes 4-bit `Params4bit` as the float `(out, in)` weight it multiplies with.

    On a CPU with AVX512-bf16, bitsandbytes repacks the codes for its own kernel at the first
    eval-mode forward and keeps the block scales as bfloat16 (`packing_format_for_cpu`); its
    own inverse re-quantizes those scales, so the codes are unpacked here from a copy and scaled
    by the bfloat16 scales that kernel uses. The layer itself is left as it is."""
    import copy

    import bitsandbytes.functional as bnb_functional

    state = weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        return bnb_functional.dequantize_4bit(weight.data, state).float()
    state = copy.deepcopy(state)
    scales = state.absmax.float()  # (in / blocksize, out), bfloat16 values
    out_features, in_features = state.shape
    packed, _ = bnb_functional._convert_weight_packed_for_cpu_inverse(weight.data.clone(), state)
    flat = packed.reshape(-1).view(torch.uint8).to(torch.long)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=-1).reshape(out_features, in_features)
    block_scales = scales.T.repeat_interleave(in_features // scales.shape[0], dim=1)
    return state.code.float()[codes] * block_scales


def float_state(module: nn.Module, keep_int8_linears: bool = False) -> dict[str, torch.Tensor]:
    """`module`'s state as plain float tensors under the names an unquantized twin has: each
    quantized linear's `weight` (dequantized) and `bias`, each kernel `Int8Embedding`'s `weight`
    (dequantized), every other tensor as it is. With `keep_int8_linears`, bitsandbytes int8
    linears keep their own serialized state (int8 `weight`, `SCB`, `weight_format`), which
    transformers' bitsandbytes loader reads back."""
    from nexus_kernel.algorithms.quantize import Int8Embedding

    state = {name: value.detach() for name, value in module.state_dict().items() if isinstance(value, torch.Tensor)}
    for name, child in module.named_modules():
        prefix = f"{name}." if name else ""
        if keep_int8_linears and _bnb_layer(child, "Linear8bitLt"):
            continue
        if isinstance(child, Int8Embedding):
            replaced = {"weight": child.weight()}
        else:
            weight = float_linear_weight(child)
            if weight is None:
                continue
            replaced = {"weight": weight}
            if getattr(child, "bias", None) is not None:
                replaced["bias"] = child.bias.detach().float()  # type: ignore[union-attr]
        for key in [key for key in state if key.startswith(prefix)]:  # a leaf: all its keys are its own
            del state[key]
        state |= {prefix + key: value for key, value in replaced.items()}
    return {name: value.contiguous() for name, value in state.items()}


def _made_by_bnb_int8(manifest: Mapping[str, Any]) -> set[str]:
    """The manifest's `quantizers` keys (`backbone`, `adapters.<name>`) that bitsandbytes int8 made."""
    section = manifest["student"]
    if section["scheme"] != "int8":
        return set()
    return {key for key, made_by in section["quantizers"].items() if made_by == BNB_INT8_QUANTIZER}


def _bnb_int8_backbone(manifest: Mapping[str, Any]) -> bool:
    return "backbone" in _made_by_bnb_int8(manifest)


def backbone_files(student: Any, manifest: Mapping[str, Any]) -> dict[str, bytes]:
    """`backbone/` as a `save_pretrained` folder (see the module docstring)."""
    from transformers import GenerationConfig

    from nexus_kernel.student.decoding import SpecialIds
    from nexus_kernel.student.packaging import folder_bytes

    backbone = student.backbone
    config = backbone.config.__class__.from_dict(backbone.config.to_dict())
    config.tie_word_embeddings = False  # the bundle's LM head is its own (quantized) layer
    keep_int8 = _bnb_int8_backbone(manifest)
    if keep_int8:
        config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True,
                                      "llm_int8_skip_modules": [], "llm_int8_has_fp16_weight": False,
                                      "llm_int8_threshold": 0.0}
    special = SpecialIds.of(student.tokenizer)
    generation = GenerationConfig(do_sample=False, bos_token_id=special.bos, eos_token_id=special.eos,
                                  pad_token_id=special.pad)
    files = {f"{BACKBONE}/{name}": data for name, data in folder_bytes(config.save_pretrained).items()}
    files |= {f"{BACKBONE}/{name}": data for name, data in folder_bytes(generation.save_pretrained).items()}
    files |= {f"{BACKBONE}/{name}": data for name, data in folder_bytes(student.tokenizer.save_pretrained).items()}
    files[f"{BACKBONE}/model.safetensors"] = _hf_safetensors(float_state(backbone, keep_int8_linears=keep_int8))
    return files


def lora_files(name: str, adapter: Any) -> dict[str, bytes]:
    """`adapters/<name>/`: PEFT's `adapter_config.json` (written by PEFT's `LoraConfig`) and
    `adapter_model.safetensors` with `lora_A` = down and `lora_B` = up per target."""
    from peft import LoraConfig

    from nexus_kernel.student.packaging import folder_bytes

    spec = adapter.spec
    config = LoraConfig(r=spec.rank, lora_alpha=spec.rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=sorted(spec.targets))
    tensors = {}
    for target in sorted(spec.targets):
        delta = adapter.delta(target)
        for part, layer in (("lora_A", delta.down), ("lora_B", delta.up)):
            weight = float_linear_weight(layer)
            if weight is None:
                raise ExportError(f"adapter {name!r}: {target}.{part} is a {type(layer).__name__}, "
                                  "which the export cannot read as float weights")
            tensors[f"base_model.model.{target}.{part}.weight"] = weight.contiguous()
    files = {f"adapters/{name}/{file}": data for file, data in folder_bytes(config.save_pretrained).items()}
    files[f"adapters/{name}/adapter_model.safetensors"] = _hf_safetensors(tensors)
    return files


def _projector_description(projector: nn.Module) -> dict[str, Any]:
    described: dict[str, Any] = {"class": f"{type(projector).__module__}.{type(projector).__qualname__}"}
    for key in ("input_shape", "patch", "stack"):
        if hasattr(projector, key):
            value = getattr(projector, key)
            described[key] = list(value) if isinstance(value, tuple) else value
    return described


def parts_files(name: str, adapter: Any, assets: Mapping[str, torch.Tensor]) -> dict[str, bytes]:
    """`adapters/<name>/parts.*` for a capability with a projector, a head or assets; nothing
    for a text capability without them."""
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, Any] = {"capability": name, "output": adapter.spec.output,
                                 "output_dim": adapter.spec.output_dim, "input": adapter.spec.input_projector or "text"}
    if adapter.projector is not None:
        tensors |= {f"projector.{key}": value for key, value in float_state(adapter.projector).items()}
        described["projector"] = _projector_description(adapter.projector)
    if adapter.head is not None:
        tensors |= {f"head.{key}": value for key, value in float_state(adapter.head).items()}
        described["head"] = "the mean of the last hidden state over real positions, then head.linear"
    tensors |= {f"assets.{key}": value.detach().float().contiguous() for key, value in assets.items()}
    if not tensors:
        return {}
    described["tensors"] = sorted(tensors)
    return {f"adapters/{name}/parts.safetensors": _hf_safetensors(tensors),
            f"adapters/{name}/parts.json": (json.dumps(described, indent=2, sort_keys=True) + "\n").encode()}


def export_files(bundle: Any) -> dict[str, bytes]:
    """Every exported file but `nexus_export.json`, for a loaded `Bundle`."""
    files = backbone_files(bundle.student, bundle.manifest)
    for name in sorted(bundle.student.adapters):
        adapter = bundle.student.adapters[name]
        files |= lora_files(name, adapter)
        files |= parts_files(name, adapter, bundle.assets.get(name, {}))
    return files


def _writable_destination(out: Path) -> None:
    """Refuse, before any work, an `out` that cannot become the export folder."""
    if out.exists() and not (out / EXPORT_MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an earlier export (no {EXPORT_MANIFEST}); choose an empty or "
                          "new folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"{out}: {ancestor} is a file, so the export folder cannot be made there")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: {ancestor} is not writable")


def bnb_int8_adapters(manifest: Mapping[str, Any]) -> list[str]:
    """The capabilities whose adapters bitsandbytes int8 quantized (bundles packaged before the
    kernel took every adapter): that layer also rounds its input, so their float export answers
    a little differently from the bundle."""
    return sorted(key.removeprefix("adapters.") for key in _made_by_bnb_int8(manifest) if key.startswith("adapters."))


def export_hf(bundle_folder: Path, out: Path) -> dict[str, Any]:
    """Export the bundle at `bundle_folder` into `out` (see the module docstring); returns the
    export's manifest, whose `warnings` say where the export cannot compute exactly what the
    bundle does. A bundle that fails verification raises `BundleError`; an `out` that exists and
    is not an earlier export, lies inside the bundle or cannot be written raises `ExportError`."""
    from nexus_kernel.run.fsio import canonical_json, sha256_bytes
    from nexus_kernel.student.bundle import replace_folder
    from nexus_kernel.student.packaging import load_bundle

    out = out.resolve()  # `.` or `..` has no name to put a temporary sibling beside
    _writable_destination(out)
    if out == bundle_folder.resolve() or out.is_relative_to(bundle_folder.resolve()):
        raise ExportError(f"{out}: export outside the bundle {bundle_folder}, not into it")
    bundle = load_bundle(bundle_folder)
    files = export_files(bundle)
    warnings = [f"adapter {name!r} was quantized by bitsandbytes int8, which also rounds its input; its float "
                "PEFT export answers close to, not exactly as, the bundle (package again with this version "
                "for an exact export)" for name in bnb_int8_adapters(bundle.manifest)]
    manifest = {"format": "hf", "bundle": str(bundle_folder), "capabilities": sorted(bundle.student.adapters),
                "backbone_quantization": "bitsandbytes int8" if _bnb_int8_backbone(bundle.manifest) else "float",
                "warnings": warnings,
                "files": {path: {"bytes": len(data), "sha256": sha256_bytes(data)}
                          for path, data in sorted(files.items())}}
    try:
        replace_folder(out, files | {EXPORT_MANIFEST: canonical_json(manifest).encode()})
    except OSError as exc:
        raise ExportError(f"{out}: the export could not be written ({exc.strerror or exc}); nothing was "
                          "replaced") from None
    return manifest


def describe_export(out: Path, manifest: Mapping[str, Any]) -> str:
    """What `nexus export` prints: the folder, what it holds and how to load it."""
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    names = ", ".join(manifest["capabilities"])
    summary = (f"exported to {out} ({total / 1e6:.2f} MB; backbone {manifest['backbone_quantization']}; "
               f"PEFT LoRA adapters: {names})\n")
    recipe = (f"load: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{out / BACKBONE}', "
              f"dtype=torch.float32), '{out / 'adapters' / manifest['capabilities'][0]}')")
    return summary + recipe
