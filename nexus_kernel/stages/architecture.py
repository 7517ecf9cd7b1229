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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import StageError
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.run.layout import ARCHITECTURE_FILE, LOCK_FILE, PROFILE_DIR, PROFILE_SUMMARY, REGISTRY_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.runner import RunContext
from nexus_kernel.student.build import (
    build_backbone,
    build_student,
    embedding_width,
    map_layer,
    teacher_source,
    teacher_words,
)
from nexus_kernel.student.model import (
    AdapterError,
    CapabilityAdapter,
    NexusStudent,
    StudentBatch,
    default_targets,
    linear_targets,
)
from nexus_kernel.teachers.binding import bound_capability

log = get_logger("architecture")


def dummy_batch(student: NexusStudent, adapter: CapabilityAdapter) -> StudentBatch:
    """A two-item batch of the inputs the adapter reads: zeros of its projector's
    `input_shape` when it has a projector (image, audio), and a short text in the student's
    tokenizer when it has none (text in, whatever the output) or when it writes text (the
    prompt after the prefix). A projector without `input_shape` is an `AdapterError`."""
    from nexus_kernel.student.decoding import left_padded

    batch = StudentBatch()
    name = adapter.spec.capability
    if adapter.projector is not None:
        shape = getattr(adapter.projector, "input_shape", None)
        if shape is None:
            raise AdapterError(f"{name}: its projector {type(adapter.projector).__name__} has no `input_shape` "
                               "(the shape of one raw input, e.g. (channels, height, width)); stage 3 needs it "
                               "to check a forward pass")
        batch.prefix = torch.zeros(2, *shape)
    if adapter.projector is None or adapter.spec.output == "text":
        batch.input_ids, batch.attention_mask = left_padded(student.tokenizer, ["a short prompt", "two"])
    return batch


def _described(batch: StudentBatch) -> str:
    parts = {"prefix": batch.prefix, "input_ids": batch.input_ids}
    return ", ".join(f"{key} {tuple(value.shape)}" for key, value in parts.items() if value is not None) or "nothing"


def check_forward(student: NexusStudent, name: str) -> dict[str, Any]:
    """Run the dummy batch through capability `name` and record the shapes; a batch the
    adapter cannot run, or a shape that does not fit the spec, is an `AdapterError` naming
    the capability."""
    adapter = student.adapters[name]
    spec = adapter.spec
    batch = dummy_batch(student, adapter)  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            output = student(name, batch)
    except AdapterError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # torch's errors for shapes that do not fit
        raise AdapterError(f"{name}: the {spec.output}-out adapter ({spec.input_projector or 'text'} in) fails "
                           f"a forward pass on a dummy batch of {_described(batch)}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
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


def cut_from_teacher(context: RunContext, source: str, registry: dict[str, Any], summary: dict[str, Any]
                     ) -> dict[str, Any]:
    """Cut the student's backbone from capability `source`'s teacher (`backbone =
    "teacher:<source>"`): its `student.keep_layers` blocks whose removal cost the most in stage 2, saved
    in the run's `student/backbone`; returns what was kept, for `architecture.json`."""
    from nexus_kernel.run.layout import PRUNED_BACKBONE_DIR
    from nexus_kernel.student.pruning import prune_causal_lm

    if source not in summary:
        raise StageError(f"student.backbone = 'teacher:{source}': no capability {source!r} was profiled "
                         f"(profiled: {', '.join(sorted(summary)) or 'none'})")
    teacher = summary[source]["teacher"]
    profile = json.loads((context.run_dir / PROFILE_DIR / source / "profile.json").read_text())
    if "removal" not in profile:
        raise StageError(f"student.backbone = 'teacher:{source}': {source}'s profile has no removal ranking "
                         "(it was profiled before the student was to be cut from it); rerun from stage 2")
    ranking = profile["removal"]["ranking"]
    keep = context.config.section("student")["keep_layers"]
    cut = prune_causal_lm(teacher, Path(registry[teacher]["path"]), ranking, keep,
                          context.run_dir / PRUNED_BACKBONE_DIR)
    log.info("student cut from its teacher", capability=source, teacher=teacher, kept=len(cut.kept),
             of=cut.teacher_layers, parameters=cut.parameters)
    return {"capability": source, "teacher": teacher, **cut.to_json()}


def student_block(teacher_layer: str, candidates: list[str], student_layers: int, cut: dict[str, Any] | None) -> int:
    """The student block anchored to `teacher_layer`: the same block when the student was cut
    from this teacher and kept it, else the block at the same relative depth (`map_layer`)."""
    if cut is not None and teacher_layer.startswith(cut["stack"] + "."):
        index = teacher_layer[len(cut["stack"]) + 1:]
        if index.isdigit() and int(index) in cut["kept_layers"]:
            return int(cut["kept_layers"].index(int(index)))
    return map_layer(teacher_layer, candidates, student_layers)


def run_architecture(context: RunContext) -> str:
    """Stage 3: decide, build and check the student; write `architecture.json`."""
    summary = json.loads((context.run_dir / PROFILE_SUMMARY).read_text())
    registry = {entry["name"]: entry for entry in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    lock = json.loads((context.run_dir / LOCK_FILE).read_text())
    if not summary:
        raise StageError("no capability was profiled (stage 2 found no teacher); nothing to distil")
    owned = context.plugins.capabilities()
    settings = context.config.section("student")
    folders = [Path(registry[item["teacher"]]["path"]) for item in summary.values()]
    words = teacher_words(folders) if settings["backbone"] == "config" else None
    source = teacher_source(settings)
    cut = cut_from_teacher(context, source, registry, summary) if source is not None else None
    backbone, tokenizer, made = build_backbone(settings, context.config.source.parent, context.run_dir, words,
                                               lock["seed"])
    student_layers = int(backbone.config.num_hidden_layers)
    hidden = int(backbone.config.hidden_size)
    targets = linear_targets(backbone, default_targets(backbone))
    capabilities: dict[str, Any] = {}
    for name in sorted(summary):
        if name not in owned:
            raise StageError(f"{name} was profiled but no loaded plugin provides it; rerun from stage 0")
        record = owned[name][1]
        capability = bound_capability(context.plugins, context.run_dir, name)
        profile = json.loads((context.run_dir / PROFILE_DIR / name / "profile.json").read_text())
        audit = profile["rank_audit"]
        rank = capability.choose_rank(audit["intrinsic_dim"], audit["max_rank"])
        candidates = list(profile["ablation"]["loss_increase"])
        # In key-layer order (largest ablation effect first): anchor k reads teacher layer k.
        own_cut = cut if cut is not None and cut["capability"] == name else None
        layer_map = [{"teacher": layer, "student": student_block(layer, candidates, student_layers, own_cut)}
                     for layer in profile["key_layers"]]
        teacher = summary[name]["teacher"]
        output_dim = (embedding_width(teacher, Path(registry[teacher]["path"]))
                      if capability.output == "embedding" else None)
        spec = AdapterSpec(capability=name, rank=rank, hidden_size=hidden, targets=targets,
                           anchored_layers=tuple(pair["student"] for pair in layer_map),
                           input_projector=capability.input_projector, output=capability.output,
                           output_dim=output_dim)
        capabilities[name] = {
            "plugin": record.distribution, "modality": capability.modality, "teacher": teacher,
            "intrinsic_dim": audit["intrinsic_dim"], "max_rank": audit["max_rank"], "rank": rank,
            "rank_policy": capability.rank_policy is not None and rank < min(audit["intrinsic_dim"], audit["max_rank"]),
            "layer_map": layer_map, "adapter": spec.to_json(),
        }
    made = {**made, "cut": cut} if cut is not None else made
    architecture = {"format": 1, "backbone": {**made, "class": type(backbone).__name__, "layers": student_layers,
                                              "hidden_size": hidden, "vocab_size": int(backbone.config.vocab_size)},
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
