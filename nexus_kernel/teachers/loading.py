"""Loading a teacher from a local Hugging Face folder, quantized as far as the device allows.

The order tried is NF4 (bitsandbytes 4-bit), INT8 (bitsandbytes 8-bit), torch dynamic INT8
(`nn.Linear` only), bf16, fp32; each option that fails is recorded with the reason, so
`profile.json` can say what was used and why. The model class is the one the folder's
`config.json` names in `architectures`, so any transformers model saved with `save_pretrained`
loads, whatever its task: a causal LM as its `...ForCausalLM`, an encoder (BERT-family
sentence encoder, ViT, Wav2Vec2, ...) as the class it was saved as (`BertModel`,
`BertForMaskedLM`, ...; `model.base_model` is the encoder either way). An encoder folder whose
`architectures` is missing or names a class transformers lacks loads as its base model through
`AutoModel`; any other unknown class is an error naming it. Before any option is tried, every safetensors file is read once,
tensor by tensor: an unreadable file or a NaN or Inf weight stops the load with its name.

`choose_precision` is the `auto` rule stage 2 applies before it asks for a teacher: on CUDA
the order above from NF4; on a CPU, which has no working 4-bit kernel (bitsandbytes NF4 there
dequantizes every matmul: SmolLM2-135M loads in 24-29 s instead of 2-9 s and runs 2.5x slower
than bf16), the fastest option whose weights fit half the memory budget. transformers' own
progress bars ("Loading weights") are off during a load, so they never reach the console or
the logs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_kernel.errors import NexusError

QUANTIZATION_ORDER = ("nf4", "int8", "dynamic-int8", "bf16", "fp32")
_WEIGHT_SUFFIXES = (".safetensors",)


class TeacherLoadError(NexusError):
    """A teacher folder is missing, corrupt, or holds a model transformers cannot build."""


@dataclass
class LoadedTeacher:
    """A teacher in memory and how it got there."""

    name: str
    folder: Path
    model: Any
    quantization: str
    skipped: dict[str, str] = field(default_factory=dict)
    note: str = ""
    """How the model class was chosen when it is not the one `config.json` names (else empty)."""
    chosen: str = ""
    """Why the first option tried was tried (`choose_precision`'s reason; empty: the config named it)."""

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"teacher": self.name, "quantization": self.quantization,
                                     "skipped": dict(self.skipped)}
        if self.chosen:
            described["chosen"] = self.chosen
        return {**described, "note": self.note} if self.note else described


def _read_config(name: str, folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise TeacherLoadError(f"teacher {name!r}: folder {folder} does not exist")
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise TeacherLoadError(f"teacher {name!r}: {config_path} is missing (not a "
                               "save_pretrained folder)") from None
    except ValueError as exc:
        raise TeacherLoadError(f"teacher {name!r}: {config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise TeacherLoadError(f"teacher {name!r}: {config_path} is not a JSON object")
    return config


def _is_encoder(model_type: str) -> bool:
    """Whether transformers' `model_type` is an encoder family: it has a masked-LM head (BERT,
    RoBERTa, DeBERTa, MPNet, ...) or no causal-LM class at all (ViT, DINOv2, Wav2Vec2, ...).
    Its base model (`AutoModel`) is then the encoder itself; a decoder's base model would drop
    the LM head its task needs."""
    from transformers.models.auto import modeling_auto

    return (model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
            or model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _architecture(name: str, folder: Path) -> tuple[Any, str]:
    """The model class to load `folder` with, and a note when it is not the one `config.json`
    names: the first class of `architectures` that transformers provides; else, for an
    encoder family (`_is_encoder`) that transformers knows, its base model through
    `AutoModel` (what a sentence-encoder export or a config without `architectures` needs);
    else a `TeacherLoadError` naming the classes and the model type."""
    import transformers
    from transformers.models.auto import modeling_auto

    config = _read_config(name, folder)
    architectures = config.get("architectures") or []
    for architecture in architectures:
        model_class = getattr(transformers, architecture, None)
        if model_class is not None:
            return model_class, ""
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in modeling_auto.MODEL_MAPPING_NAMES and _is_encoder(model_type):
        named = f"names architectures {architectures}" if architectures else "names no architectures"
        return transformers.AutoModel, (f"config.json {named}; loaded the {model_type} encoder's base model "
                                        f"({modeling_auto.MODEL_MAPPING_NAMES[model_type]}) with AutoModel")
    from nexus_kernel.teachers.classes import supported_classes

    raise TeacherLoadError(f"teacher {name!r}: {folder / 'config.json'} names architectures {architectures} "
                           f"(model_type {model_type!r}), none of which this transformers "
                           f"{transformers.__version__} provides; an encoder family it knows loads as its base "
                           "model, any other model needs a class transformers provides or a plugin's "
                           f"load_teacher (supported causal-LM classes: {supported_classes()})")


def _non_finite_tensors(path: Path) -> list[str]:
    """Names of the floating-point tensors in the safetensors file `path` that hold a NaN or
    an Inf, read one tensor at a time (so memory stays at one tensor, whatever the backend)."""
    import torch
    from safetensors import safe_open

    found = []
    with safe_open(str(path), framework="pt") as handle:
        for key in sorted(handle.keys()):
            tensor = handle.get_tensor(key)
            # A float64 sum is NaN or Inf exactly when an element is (no sum of finite weights
            # reaches 1e308), and it is several times faster than isfinite() on half precision.
            if tensor.is_floating_point() and not torch.isfinite(tensor.sum(dtype=torch.float64)):
                found.append(key)
    return found


def check_weight_file(name: str, path: Path) -> None:
    """Read the safetensors file `path` of teacher `name` tensor by tensor; raise
    `TeacherLoadError` naming both when it is unreadable, or when it holds NaN or Inf values
    (naming up to 5 such tensors). Code that loads teacher weights by other means calls it too.
    """
    try:
        bad = _non_finite_tensors(path)
    except Exception as exc:  # safetensors raises its own error types per failure
        raise TeacherLoadError(f"teacher {name!r}: {path} is not a readable safetensors file "
                               f"({type(exc).__name__}: {exc})") from None
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TeacherLoadError(f"teacher {name!r}: {path} holds non-finite values (NaN or Inf) in "
                               f"{len(bad)} tensor{'s' if len(bad) != 1 else ''}: {shown}; "
                               "the file is corrupt or the model diverged")


def _check_weights(name: str, folder: Path) -> None:
    """Read every safetensors file, so a corrupt one (unreadable, or holding NaN or Inf
    weights) is reported by name before any backend loads it."""
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise TeacherLoadError(f"teacher {name!r}: no .safetensors weights in {folder} "
                               "(pickle weights are never loaded)")
    for path in files:
        check_weight_file(name, path)


def _load(model_class: Any, folder: Path, scheme: str, device: str) -> Any:
    from nexus_kernel.run.progress import quiet_library_bars

    with quiet_library_bars():
        return _load_as(model_class, folder, scheme, device)


def _load_as(model_class: Any, folder: Path, scheme: str, device: str) -> Any:
    import torch

    if scheme in ("nf4", "int8"):
        from transformers import BitsAndBytesConfig

        # bitsandbytes warns on every 8-bit matmul that it casts float32 inputs to float16.
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_compute_dtype=torch.float32)
                  if scheme == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
        return model_class.from_pretrained(folder, quantization_config=config, device_map=device)
    if scheme == "dynamic-int8":
        if device != "cpu":
            raise RuntimeError("torch dynamic INT8 runs on CPU only")
        model = model_class.from_pretrained(folder, dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices from torch.ao about itself
            quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if not any("quantized" in type(module).__module__ for module in quantized.modules()):
            raise RuntimeError("the model has no nn.Linear layer to quantize")
        return quantized
    dtype = torch.bfloat16 if scheme == "bf16" else torch.float32
    return model_class.from_pretrained(folder, dtype=dtype).to(device)


def load_teacher_folder(name: str, folder: Path, preferred: str = "nf4", device: str = "cpu"
                        ) -> LoadedTeacher:
    """Load the teacher in `folder`, trying `QUANTIZATION_ORDER` from `preferred` on; errors
    that are about the folder itself (missing, corrupt, unknown architecture) stop at once."""
    if preferred not in QUANTIZATION_ORDER:
        raise TeacherLoadError(f"unknown quantization {preferred!r}; use one of {QUANTIZATION_ORDER}")
    model_class, note = _architecture(name, folder)
    _check_weights(name, folder)
    skipped: dict[str, str] = {}
    for scheme in QUANTIZATION_ORDER[QUANTIZATION_ORDER.index(preferred):]:
        try:
            model = _load(model_class, folder, scheme, device)
        except Exception as exc:  # each backend fails in its own way; the next option is tried
            skipped[scheme] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            continue
        return LoadedTeacher(name, folder, model.eval(), scheme, skipped, note)
    raise TeacherLoadError(f"teacher {name!r}: no quantization option could load {folder}: {skipped}")


BYTES_PER_PARAMETER = {"fp32": 4.0, "bf16": 2.0, "dynamic-int8": 1.0, "int8": 1.0, "nf4": 0.5}
AUTO = "auto"
"""The `profiling.quantization` value that lets `choose_precision` pick the first option."""
_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU flags that give bf16 matmuls in hardware (AMX, AVX512-BF16), as Linux lists
    them; empty elsewhere or without them (bf16 is then emulated, slower than fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in _BF16_FLAGS if flag in flags]


def choose_precision(device: str, parameters: int, budget_gb: float, share: float = 0.5,
                     bf16_flags: list[str] | None = None) -> tuple[str, str]:
    """The first quantization option to try on `device` for a teacher of `parameters`, and why.

    CUDA: `nf4` (bitsandbytes' 4-bit kernels; the loader walks `QUANTIZATION_ORDER` on from
    there). CPU, which has no working 4-bit kernel: the fastest option whose weights fit
    `share` of the memory budget: bf16 then fp32 where the CPU has native bf16 matmuls
    (`native_bf16_flags`; else fp32 then bf16, which would be emulated), then INT8, then NF4
    (also when nothing fits). Dynamic INT8 is never chosen: it loads the fp32 weights first, so
    it needs what fp32 needs. Measured on SmolLM2-135M-Instruct (a bf16 folder) on a 2-core AMX
    Xeon shared with other work (load average 3-8), each in a fresh process, weight check
    included: loads of 2-9 s (bf16), 4-10 s (fp32), 18 s (dynamic INT8), 24-29 s (NF4); one
    forward pass of 64 x 32 tokens 9-11 s (bf16), 14-15 s (fp32), 14 s (dynamic INT8), 25 s (NF4)."""
    allowance = budget_gb * 2**30 * share
    size = f"{parameters / 1e6:,.0f}M parameters" if parameters >= 1e6 else f"{parameters:,} parameters"
    if device != "cpu":
        return "nf4", f"{device}: bitsandbytes 4-bit kernels, so NF4 first and the rest of the order after it"
    flags = native_bf16_flags() if bf16_flags is None else bf16_flags
    floats = ("bf16", "fp32") if flags else ("fp32", "bf16")
    speed = (f"native bf16 matmuls ({', '.join(flags)})" if flags
             else "no native bf16 matmuls (no amx_bf16 or avx512_bf16 flag), so fp32 before bf16")
    for scheme in (*floats, "int8", "nf4"):
        weights = parameters * BYTES_PER_PARAMETER[scheme]
        if weights <= allowance:
            return scheme, (f"cpu: no working 4-bit kernel (bitsandbytes NF4 dequantizes every matmul); "
                            f"{speed}; {scheme} is the fastest option whose weights ({weights / 2**30:.2f} GB for "
                            f"{size}) fit {share:.0%} of the {budget_gb:g} GB memory budget")
    return "nf4", (f"cpu: no option's weights fit {share:.0%} of the {budget_gb:g} GB memory budget for {size}; "
                   "NF4 is the smallest")


def most_precise_fitting(parameters: int, budget_gb: float, share: float = 0.5) -> str:
    """The most precise option of `QUANTIZATION_ORDER` whose weights take at most `share` of
    the memory budget (stage 4 wants the teacher's best answers, not its smallest copy)."""
    allowance = budget_gb * 2**30 * share
    for scheme in reversed(QUANTIZATION_ORDER):
        if parameters * BYTES_PER_PARAMETER[scheme] <= allowance:
            return scheme
    return QUANTIZATION_ORDER[0]
