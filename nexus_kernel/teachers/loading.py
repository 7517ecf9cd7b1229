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
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_kernel.errors import NexusError
from nexus_kernel.teachers.registry import TeacherEntry

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

    def describe(self) -> dict[str, Any]:
        described = {"teacher": self.name, "quantization": self.quantization, "skipped": dict(self.skipped)}
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
    raise TeacherLoadError(f"teacher {name!r}: {folder / 'config.json'} names architectures {architectures} "
                           f"(model_type {model_type!r}), none of which this transformers "
                           f"{transformers.__version__} provides; an encoder family it knows loads as its base "
                           "model, any other model needs a class transformers provides or a plugin's "
                           "load_teacher")


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


def most_precise_fitting(parameters: int, budget_gb: float, share: float = 0.5) -> str:
    """The most precise option of `QUANTIZATION_ORDER` whose weights take at most `share` of
    the memory budget (stage 4 wants the teacher's best answers, not its smallest copy)."""
    allowance = budget_gb * 2**30 * share
    for scheme in reversed(QUANTIZATION_ORDER):
        if parameters * BYTES_PER_PARAMETER[scheme] <= allowance:
            return scheme
    return QUANTIZATION_ORDER[0]
