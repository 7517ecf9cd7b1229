"""Stage 3, architecture: from the profiles, decide the student and write `architecture.json`.

The student is a transformers causal LM (built from `[student]` or loaded from a local
folder) with exactly one adapter per capability: rank `min(intrinsic_dim, max_rank)`
(lowered, never raised, by the plugin's rank policy), low-rank deltas on every linear of the
backbone's decoder blocks, the teacher's key layers mapped to student blocks by relative
depth (those blocks are anchored), the input projector the modality needs, and an embedding
head for embedding capabilities. The file is data: `build_student` turns it back into a
module with one generic class plus each plugin's `build_adapter`. A dummy forward pass
through every adapter is checked and its shapes recorded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import StageError
from nexus_kernel.fsio import atomic_write_json
from nexus_kernel.logs import get_logger
from nexus_kernel.runner import RunContext
from nexus_kernel.student import AdapterError, CapabilityAdapter, NexusStudent, StudentBatch, default_targets, linear_targets

ARCHITECTURE_FILE = "architecture.json"
STUDENT_DIR = "student"  # the demo student's tokenizer (backbone = config)
PROJECTORS = {"text": None, "image": "patch", "audio": "audio-frames"}
_INDEXED = re.compile(r"^(?P<stack>.*)\.(?P<index>\d+)$")

log = get_logger("architecture")


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


def build_backbone(settings: dict[str, Any], config_dir: Path, run_dir: Path, words: list[str] | None,
                   seed: int) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The backbone and its tokenizer, and how they were made. With `backbone = "config"` the
    tokenizer is the kernel's word-and-character one over `words` (saved in `student/`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from nexus_kernel.text import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
    from nexus_kernel.training import seed_everything

    seed_everything(seed)
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
    """The width of an embedding teacher's output: its config's `hidden_size`."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"teacher {teacher!r}: cannot read {folder / 'config.json'} ({exc})") from None
    width = config.get("hidden_size") or config.get("d_model")
    if not isinstance(width, int):
        raise StageError(f"teacher {teacher!r}: {folder / 'config.json'} has no integer hidden_size")
    return width


def adapter_for(context: RunContext, name: str, spec: AdapterSpec) -> CapabilityAdapter:
    """The owner's `build_adapter`, or the kernel's for text capabilities (no projector)."""
    capability, record = context.plugins.capabilities()[name]
    adapter = context.plugins.call_for(name, "build_adapter", capability=capability, spec=spec)
    if adapter is None:
        if spec.input_projector is not None:
            raise StageError(f"{name}: its plugin {record.distribution} builds no adapter, and a "
                             f"{capability.modality} capability needs a {spec.input_projector} projector")
        adapter = CapabilityAdapter(spec)
    if not isinstance(adapter, CapabilityAdapter):
        raise StageError(f"{name}: build_adapter of {record.distribution} returned {type(adapter).__name__}, "
                         "not a nexus_kernel.student.CapabilityAdapter")
    if adapter.spec != spec:
        raise StageError(f"{name}: build_adapter of {record.distribution} changed the spec it was given")
    return adapter


def build_student(context: RunContext, architecture: dict[str, Any], words: list[str] | None = None
                  ) -> NexusStudent:
    """The student `architecture` describes: its backbone (seeded) and one adapter per
    capability, built in name order so the same file always gives the same weights."""
    from nexus_kernel.training import seed_everything

    seed = architecture["backbone"]["seed"]
    backbone, tokenizer, _ = build_backbone(context.config.section("student"), context.config.source.parent,
                                            context.run_dir, words, seed)
    student = NexusStudent(backbone, tokenizer)
    for index, name in enumerate(sorted(architecture["capabilities"])):
        seed_everything(seed + 1 + index)
        spec = AdapterSpec.from_json(architecture["capabilities"][name]["adapter"])
        student.add_adapter(name, adapter_for(context, name, spec))
    return student


def dummy_batch(student: NexusStudent, adapter: CapabilityAdapter) -> StudentBatch:
    """A two-item batch with the shapes the adapter expects (zeros; a short text)."""
    from nexus_kernel.text import left_padded

    batch = StudentBatch()
    if adapter.projector is not None:
        batch.prefix = torch.zeros(2, *adapter.projector.input_shape)
    if adapter.spec.output == "text":
        batch.input_ids, batch.attention_mask = left_padded(student.tokenizer, ["a short prompt", "two"])
    return batch


def check_forward(student: NexusStudent, name: str) -> dict[str, Any]:
    """Run the dummy batch through capability `name` and record the shapes; a shape that does
    not fit the spec is an error naming the capability."""
    adapter = student.adapters[name]
    spec = adapter.spec
    batch = dummy_batch(student, adapter)  # type: ignore[arg-type]
    with torch.no_grad():
        output = student(name, batch)
    shapes: dict[str, Any] = {}
    if batch.prefix is not None:
        shapes["prefix"] = list(batch.prefix.shape)
    if output.logits is not None:
        shapes["logits"] = list(output.logits.shape)
        if output.logits.shape[-1] != student.backbone.config.vocab_size:
            raise AdapterError(f"{name}: logits have width {output.logits.shape[-1]}, not the vocabulary size")
    if spec.output == "embedding":
        if output.embedding is None or output.embedding.shape != (2, spec.output_dim):
            raise AdapterError(f"{name}: the embedding head gives {None if output.embedding is None else tuple(output.embedding.shape)}, "
                               f"expected (2, {spec.output_dim})")
        shapes["embedding"] = list(output.embedding.shape)
    for index, layer in enumerate(spec.anchored_layers):
        projected = adapter.anchors[str(index)](output.pooled[layer])
        if projected.shape != (2, spec.rank):
            raise AdapterError(f"{name}: anchor {index} projects to {tuple(projected.shape)}, expected (2, {spec.rank})")
    shapes["anchor"] = [2, spec.rank]
    return shapes


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(parameter.numel() for parameter in module.parameters())


def run_architecture(context: RunContext) -> str:
    """Stage 3: decide, build and check the student; write `architecture.json`."""
    from nexus_kernel.lock import LOCK_FILE
    from nexus_kernel.pipeline import REGISTRY_FILE
    from nexus_kernel.stage_profile import OUTPUT_DIR, SUMMARY_FILE

    summary = json.loads((context.run_dir / SUMMARY_FILE).read_text())
    registry = {entry["name"]: entry for entry in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    lock = json.loads((context.run_dir / LOCK_FILE).read_text())
    if not summary:
        raise StageError("no capability was profiled (stage 2 found no teacher); nothing to distil")
    owned = context.plugins.capabilities()
    settings = context.config.section("student")
    folders = [Path(registry[item["teacher"]]["path"]) for item in summary.values()]
    words = teacher_words(folders) if settings["backbone"] == "config" else None
    backbone, tokenizer, source = build_backbone(settings, context.config.source.parent, context.run_dir, words,
                                                 lock["seed"])
    student_layers = int(backbone.config.num_hidden_layers)
    hidden = int(backbone.config.hidden_size)
    targets = linear_targets(backbone, default_targets(backbone))
    capabilities: dict[str, Any] = {}
    for name in sorted(summary):
        if name not in owned:
            raise StageError(f"{name} was profiled but no loaded plugin provides it; rerun from stage 0")
        capability, record = owned[name]
        profile = json.loads((context.run_dir / OUTPUT_DIR / name / "profile.json").read_text())
        audit = profile["rank_audit"]
        rank = capability.choose_rank(audit["intrinsic_dim"], audit["max_rank"])
        candidates = list(profile["ablation"]["loss_increase"])
        # In key-layer order (largest ablation effect first): anchor k reads teacher layer k.
        layer_map = [{"teacher": layer, "student": map_layer(layer, candidates, student_layers)}
                     for layer in profile["key_layers"]]
        teacher = summary[name]["teacher"]
        output_dim = (embedding_width(teacher, Path(registry[teacher]["path"]))
                      if capability.output == "embedding" else None)
        spec = AdapterSpec(capability=name, rank=rank, hidden_size=hidden, targets=targets,
                           anchored_layers=tuple(pair["student"] for pair in layer_map),
                           input_projector=PROJECTORS[capability.modality], output=capability.output,
                           output_dim=output_dim)
        capabilities[name] = {
            "plugin": record.distribution, "modality": capability.modality, "teacher": teacher,
            "intrinsic_dim": audit["intrinsic_dim"], "max_rank": audit["max_rank"], "rank": rank,
            "rank_policy": capability.rank_policy is not None and rank < min(audit["intrinsic_dim"], audit["max_rank"]),
            "layer_map": layer_map, "adapter": spec.to_json(),
        }
    architecture = {"format": 1, "backbone": {**source, "layers": student_layers, "hidden_size": hidden,
                                              "vocab_size": int(backbone.config.vocab_size)},
                    "capabilities": capabilities}
    del backbone
    student = build_student(context, architecture)
    parameters = {"backbone": count(student.backbone)}
    for name in sorted(capabilities):
        adapter = student.adapters[name]
        capabilities[name]["shapes"] = check_forward(student, name)
        capabilities[name]["parameters"] = {
            "deltas": count(adapter.deltas), "projector": count(adapter.projector),  # type: ignore[arg-type]
            "head": count(adapter.head), "anchors (training only)": count(adapter.anchors)}  # type: ignore[arg-type]
    architecture["parameters"] = parameters
    atomic_write_json(context.run_dir / ARCHITECTURE_FILE, architecture)
    ranks = ", ".join(f"{name} r{item['rank']}" for name, item in capabilities.items())
    log.info("student", layers=student_layers, hidden=hidden, backbone_parameters=parameters["backbone"], ranks=ranks)
    return f"backbone {student_layers}x{hidden} ({parameters['backbone'] / 1e6:.2f}M), adapters: {ranks}"
