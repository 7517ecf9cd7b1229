"""Building the student from `architecture.json`: the backbone (from `[student]` or a local
causal-LM folder), each capability's adapter through its owner's `build_adapter`, and the
teacher-to-student layer map. Stage 3 decides the architecture; stages 4-6 and the guarded
child of stage 5 rebuild the same module from it with `build_student`."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import StageError
from nexus_kernel.run.layout import PRUNED_BACKBONE_DIR, STUDENT_DIR
from nexus_kernel.run.runner import RunContext
from nexus_kernel.run.seeding import seed_everything
from nexus_kernel.student.model import CapabilityAdapter, NexusStudent

if TYPE_CHECKING:
    from nexus_kernel.plugins import PluginSet


_INDEXED = re.compile(r"^(?P<stack>.*)\.(?P<index>\d+)$")


def map_layer(teacher_layer: str, candidates: list[str], student_layers: int) -> int:
    """The student block at the same relative depth as `teacher_layer` within its stack (the
    candidates sharing its prefix): block i of n maps to floor((i + 0.5) / n * student_layers)."""
    match = _INDEXED.match(teacher_layer)
    if match is None:
        return student_layers - 1
    stack = match["stack"]
    depth = sum(1 for name in candidates if (m := _INDEXED.match(name)) and m["stack"] == stack)
    index = int(match["index"])
    return min(student_layers - 1, int((index + 0.5) / max(depth, index + 1) * student_layers))


def teacher_words(folders: list[Path]) -> list[str]:
    """Whole words of the teachers' tokenizers (what the demo student's tokenizer keeps whole)."""
    from transformers import AutoTokenizer

    words: set[str] = set()
    for folder in folders:
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            continue
        vocabulary = AutoTokenizer.from_pretrained(folder).get_vocab()
        words |= {piece.strip() for piece in vocabulary if piece.strip().isalpha() and piece.strip().isascii()
                  and len(piece.strip()) > 1}
    return sorted(words)


TEACHER_PREFIX = "teacher:"


def teacher_source(settings: dict[str, Any]) -> str | None:
    """The capability whose teacher the student is cut from (`backbone = "teacher:<capability>"`), else None."""
    backbone = str(settings["backbone"])
    return backbone[len(TEACHER_PREFIX):] if backbone.startswith(TEACHER_PREFIX) else None


def pretrained_backbone(settings: dict[str, Any]) -> bool:
    """Whether the backbone carries trained weights (a folder, or cut from a teacher), not `config`'s random ones."""
    return settings["backbone"] != "config"


def build_backbone(settings: dict[str, Any], config_dir: Path, run_dir: Path, words: list[str] | None,
                   seed: int) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The backbone and its tokenizer, and how they were made. With `backbone = "config"` the
    tokenizer is the kernel's word-and-character one over `words` (saved in `student/`); with
    `backbone = "teacher:<capability>"` both are the folder stage 3 cut from that capability's
    teacher (`cut_from_teacher`); otherwise a local causal-LM folder with its own tokenizer."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from nexus_kernel.student.decoding import BOS_ID, EOS_ID, PAD_ID, build_tokenizer

    seed_everything(seed)
    if teacher_source(settings) is not None:
        folder = run_dir / PRUNED_BACKBONE_DIR
        if not (folder / "config.json").is_file():
            raise StageError(f"student.backbone = {settings['backbone']!r}: {folder} is missing (stage 3 cuts it "
                             "from the teacher; rerun from stage 3)")
        backbone = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return backbone, AutoTokenizer.from_pretrained(folder), {"kind": "teacher", "folder": PRUNED_BACKBONE_DIR,
                                                                 "seed": seed}
    if settings["backbone"] == "config":
        tokenizer_dir = run_dir / STUDENT_DIR
        if words is None:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            tokenizer = build_tokenizer(words)
            tokenizer.save_pretrained(tokenizer_dir)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=settings["hidden_size"], num_hidden_layers=settings["layers"],
            num_attention_heads=settings["heads"], intermediate_size=settings["intermediate_size"],
            max_position_embeddings=settings["max_positions"], bos_token_id=BOS_ID, eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )
        backbone = LlamaForCausalLM(config)
        source = {"kind": "config", "config": config.to_diff_dict(), "tokenizer": STUDENT_DIR, "seed": seed}
        return backbone, tokenizer, source
    folder = Path(settings["backbone"])
    folder = folder if folder.is_absolute() else (config_dir / folder).resolve()
    if not (folder / "config.json").is_file():
        raise StageError(f"student.backbone: {folder} is not a Hugging Face model folder (no config.json)")
    backbone = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return backbone, tokenizer, {"kind": "folder", "folder": str(folder), "seed": seed}


def embedding_width(teacher: str, folder: Path) -> int:
    """The width of an embedding teacher's output: its config's `hidden_size` (`d_model`), or
    for a two-tower model without one (CLIP, SigLIP) its image tower's `vision_config.hidden_size`."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"teacher {teacher!r}: cannot read {folder / 'config.json'} ({exc})") from None
    width = config.get("hidden_size") or config.get("d_model") or (config.get("vision_config") or {}).get("hidden_size")
    if not isinstance(width, int):
        raise StageError(f"teacher {teacher!r}: {folder / 'config.json'} has no integer hidden_size")
    return width


def adapter_for(plugins: PluginSet, name: str, spec: AdapterSpec) -> CapabilityAdapter:
    """The owner's `build_adapter`, else the kernel default's (text capabilities, no
    projector); checked to be a `CapabilityAdapter` built for exactly `spec`. A capability
    whose spec names an input projector (any modality but text) needs an adapter with one:
    the kernel has no projector of its own to fall back on."""
    declared, record = plugins.capabilities()[name]
    capability = replace(declared, output=spec.output)  # the variant's output, as stage 3 chose it
    adapter = plugins.call_for(name, "build_adapter", capability=capability, spec=spec)
    if adapter is None:
        raise StageError(f"capability {name!r} ({capability.modality} modality): its plugin "
                         f"{record.distribution} builds no adapter, and a {capability.modality} "
                         "capability needs an input projector from its build_adapter")
    if not isinstance(adapter, CapabilityAdapter):
        raise StageError(f"{name}: build_adapter of {record.distribution} returned {type(adapter).__name__}, "
                         "not a nexus_kernel.student.model.CapabilityAdapter")
    if adapter.spec != spec:
        raise StageError(f"{name}: build_adapter of {record.distribution} changed the spec it was given")
    if spec.input_projector is not None and adapter.projector is None:
        raise StageError(f"capability {name!r} ({capability.modality} modality): build_adapter of "
                         f"{record.distribution} returned an adapter without an input projector; "
                         f"a {capability.modality} capability needs one")
    return adapter


def build_student(context: RunContext, architecture: dict[str, Any], words: list[str] | None = None
                  ) -> NexusStudent:
    """The student `architecture` describes: its backbone (seeded) and one adapter per
    capability, built in name order so the same file always gives the same weights."""
    seed = architecture["backbone"]["seed"]
    backbone, tokenizer, _ = build_backbone(context.config.section("student"), context.config.source.parent,
                                            context.run_dir, words, seed)
    student = NexusStudent(backbone, tokenizer)
    for index, name in enumerate(sorted(architecture["capabilities"])):
        seed_everything(seed + 1 + index)
        spec = AdapterSpec.from_json(architecture["capabilities"][name]["adapter"])
        student.add_adapter(name, adapter_for(context.plugins, name, spec))
    return student
