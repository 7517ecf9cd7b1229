"""Stage 4's pools: what one teacher answers on the training items, and its anchor targets.

With only that teacher loaded (at the most precise option that fits half the memory budget,
never below what profiling found to work), the teacher answers `pool_size` training items
(completion texts, or embedding rows), gives its top-k next-token distributions when the
objective is `kl` or `uld` (`SOFT_OBJECTIVES`; the plan's objective after the capability's
locked `text_loss`, `chosen_plan`), and its key layers' activations on the same inputs are projected on the
profiled PCA basis: per token and whitened by the profiled eigenvalues where the teacher's
tokens line up with the student's text tokens, and as per-item sequence means whitened over
the pool everywhere. While it is loaded the teacher also gives its `reference_outputs` on the
held-out items (stored in `checkpoints/<capability>/reference.safetensors`, handed to every
later `retention_metric` call) and its held-out score. Under torchrun each rank answers a
round-robin share of the pool's batches; rank 0 alone scores the teacher and writes, and the
other ranks read what it wrote. Everything is cached in
`checkpoints/<capability>/pool.{json,safetensors}` under a fingerprint, so a resumed or
repeated stage 4 does not load the teacher again.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.algorithms import memory_plan
from nexus_kernel.algorithms.retention import checked_scores
from nexus_kernel.contracts import TOP_K
from nexus_kernel.errors import StageError
from nexus_kernel.run.distributed import barrier, gather_in_order, process_budget, world
from nexus_kernel.run.fsio import (
    atomic_write_bytes,
    atomic_write_json,
    sha256_file,
    sha256_json,
)
from nexus_kernel.run.layout import LOCK_FILE, PROFILE_DIR, REGISTRY_FILE, reference_file
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import progress
from nexus_kernel.run.runner import RunContext
from nexus_kernel.student.model import NexusStudent, masked_mean
from nexus_kernel.teachers.access import TeacherSession
from nexus_kernel.teachers.binding import bound_capability

OBJECTIVES = ("kl", "uld", "sequence", "cosine")
SOFT_OBJECTIVES = ("kl", "uld")
"""The objectives whose pool holds the teacher's top-k distributions."""
PLAIN_REASONS = {
    "kl": "kl: the plugin's plan gives the teacher's distributions in the student's vocabulary",
    "uld": "uld: the plugin's plan gives the teacher's sorted distributions in its own vocabulary",
    "sequence": "sequence: cross-entropy on the teacher's outputs (the plugin's plan gives no distributions)",
    "cosine": "cosine: embedding teacher",
}
"""What `distill_report.json` says of an objective whose plan gives no `reason` of its own."""
_FORMAT = 9  # bump when what a pool holds changes: older caches are rebuilt
_TEACHER_BATCH = 64
_EIGEN_FLOOR = 1e-6

log = get_logger("distill")


@dataclass
class Pool:
    """One capability's training items with the teacher's answers and anchor targets."""

    items: list[Any]
    outputs: list[Any]
    coefficients: torch.Tensor  # (items, key layers, rank), whitened over the pool
    eigenvalues: torch.Tensor  # (key layers, rank): the pool variance of each coefficient
    teacher_scores: dict[str, Any]
    objective: str = "sequence"
    """What the teacher's plan asked for when it was loaded (`kl`, `uld`, `sequence`, `cosine`)."""
    soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """For `kl` and `uld`: top-k ids `(positions, k)`, log-probabilities `(positions, k)` and
    each item's offsets into them `(items + 1,)` (for `uld` the teacher's own ids and
    completion positions)."""
    tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Per key layer whose tokens line up with the student's text tokens: every real token's
    coefficients whitened by the profiled eigenvalues `(tokens, rank)`, and each item's
    offsets into them `(items + 1,)`."""
    reason: str = ""
    """Why the capability distils with `objective` (the plan's `reason`)."""


# projections -----------------------------------------------------------------------------------


def project(rows: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Coefficients of `rows` in the PCA basis (`components` rows are unit vectors)."""
    return ((rows.double() - mean.double()) @ components.double().T).float()


def _floor(variances: torch.Tensor) -> float:
    return max(float(variances.max()) * _EIGEN_FLOOR, 1e-12)


def token_scale(eigenvalues: torch.Tensor) -> torch.Tensor:
    """What per-token coefficients are divided by: the square roots of the profiled eigenvalues,
    a flat direction floored at a millionth of the largest."""
    return eigenvalues.clamp(min=_floor(eigenvalues)).sqrt()


def whiten(coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each coefficient to unit variance over the pool; returns the whitened
    coefficients and the variances used. The profiled eigenvalues are per-token variances,
    which sequence means do not have, so the pool's own variances are the right scale (a
    flat direction is floored at a millionth of the largest, not divided by zero)."""
    centred = coefficients - coefficients.mean(dim=0)
    variance = centred.pow(2).mean(dim=0)
    variance = variance.clamp(min=_floor(variance))
    return centred / variance.sqrt(), variance


def read_basis(run_dir: Path, name: str, key_layers: list[str], rank: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per key layer, the profiled `(mean, components[:rank], eigenvalues[:rank])`."""
    from safetensors.torch import load_file


    tensors = load_file(str(run_dir / PROFILE_DIR / name / "basis.safetensors"))
    return {layer: (tensors[f"{layer}.mean"], tensors[f"{layer}.components"][:rank], tensors[f"{layer}.eigenvalues"][:rank])
            for layer in key_layers}


def layer_activations(model: nn.Module, layers: list[str], batch: Any, forward: Callable[[Any, Any], Any],
                      teacher: str) -> dict[str, torch.Tensor]:
    """Each layer's output on `batch`, `(batch, seq, width)` (or `(batch, width)`)."""
    from nexus_kernel.algorithms.profiling import _first_tensor, _hooks, modules_named

    found: dict[str, torch.Tensor] = {}

    def grab(name: str, output: Any) -> None:
        found[name] = _first_tensor(output).detach().float()  # type: ignore[union-attr]

    with torch.inference_mode(), _hooks(modules_named(model, layers, teacher), grab):
        forward(model, batch)
    return found


def real_tokens(activation: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Per item, the rows of its real positions (all positions without a matching mask)."""
    if activation.dim() == 2:
        return [row[None] for row in activation]
    if mask is None or mask.shape != activation.shape[:2]:
        return list(activation)
    return [item[keep.bool()] for item, keep in zip(activation, mask, strict=True)]


def pack_ragged(rows: list[torch.Tensor | None], width: int, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length `(n_i, width)` rows as one tensor and offsets `(items + 1,)`; a None row
    has zero length."""
    present = [row for row in rows if row is not None]
    lengths = torch.tensor([0] + [0 if row is None else len(row) for row in rows])
    values = torch.cat(present).to(dtype) if present else torch.zeros(0, width, dtype=dtype)
    return values.contiguous(), lengths.cumsum(dim=0)


def pack_distributions(rows: list[tuple[torch.Tensor, torch.Tensor] | None]) -> tuple[torch.Tensor, ...]:
    """Per-item teacher distributions as `(ids, log-probabilities, offsets)`; an item without
    one (its tokenizations disagree) gets zero length and is trained with cross-entropy."""
    ids, offsets = pack_ragged([None if row is None else row[0] for row in rows], TOP_K, torch.long)
    values, _ = pack_ragged([None if row is None else row[1] for row in rows], TOP_K)
    return ids, values, offsets


# collecting --------------------------------------------------------------------------------------


@dataclass
class _Collected:
    """What one pass of the teacher over the pool gives, before packing."""

    outputs: list[Any] = field(default_factory=list)
    pooled: list[torch.Tensor] = field(default_factory=list)
    per_token: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    aligned: set[int] = field(default_factory=set)
    distributions: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)


def _collect_chunk(plan: Any, teacher: Any, chunk: list[Any], key_layers: list[str],
                   basis: Mapping[str, tuple[torch.Tensor, ...]]) -> _Collected:
    """One batch of the teacher's pass: its answers, anchor coefficients (pooled, and per token
    for the layers whose token counts agree with the student's, `aligned`) and, for `kl` and
    `uld`, its distributions."""
    collected = _Collected(per_token={k: [] for k in range(len(key_layers))}, aligned=set(range(len(key_layers))))
    with torch.inference_mode():
        answers = plan.teacher_outputs(chunk)
        batch = plan.teacher_batch(chunk, answers)
    mask = plan.mask_of(batch) if plan.mask_of is not None else None
    student_mask = plan.student_batch(chunk, answers).attention_mask
    found = layer_activations(teacher.model, key_layers, batch, plan.teacher_forward, teacher.name)
    pooled = []
    for k, layer in enumerate(key_layers):
        mean, components, eigenvalues = basis[layer]
        pooled.append(project(masked_mean(found[layer], mask), mean, components))
        rows = real_tokens(found[layer], mask)
        if student_mask is None or [len(row) for row in rows] != student_mask.sum(dim=1).tolist():
            collected.aligned.discard(k)
        else:
            scale = token_scale(eigenvalues)
            collected.per_token[k] = [project(row, mean, components) / scale for row in rows]
    collected.pooled.append(torch.stack(pooled, dim=1))
    if plan.objective in SOFT_OBJECTIVES:
        collected.distributions = list(plan.teacher_distributions(chunk, answers))
    collected.outputs = list(answers)
    return collected


def _collect(plan: Any, teacher: Any, items: list[Any], key_layers: list[str],
             basis: Mapping[str, tuple[torch.Tensor, ...]], description: str) -> _Collected:
    """Run the teacher over `items` in batches (`_collect_chunk`) and join them in order; a
    layer stays token-aligned only where every batch is. Under torchrun each rank answers its
    round-robin share of the batches and every rank gets all of them back, in order."""
    chunks = [items[start : start + _TEACHER_BATCH] for start in range(0, len(items), _TEACHER_BATCH)]
    here = world()
    mine = []
    with progress(sum(len(chunk) for chunk in here.shard(chunks)), description, "item") as bar:
        for chunk in here.shard(chunks):
            mine.append(_collect_chunk(plan, teacher, chunk, key_layers, basis))
            bar.update(len(chunk))
    joined = _Collected(per_token={k: [] for k in range(len(key_layers))}, aligned=set(range(len(key_layers))))
    for part in gather_in_order(mine, len(chunks)):
        joined.aligned &= part.aligned
        joined.outputs += part.outputs
        joined.pooled += part.pooled
        joined.distributions += part.distributions
        for k in joined.aligned:
            joined.per_token[k] += part.per_token[k]
    return joined


# the pool --------------------------------------------------------------------------------------


def _fingerprint(context: RunContext, name: str, entry: Mapping[str, Any], settings: Mapping[str, Any],
                 datasets: Mapping[str, str]) -> str:

    return sha256_json({
        "format": _FORMAT, "entry": entry, "pool_size": settings["pool_size"],
        "text_loss": settings.get("text_loss", "auto"),
        "eval_samples": settings["eval_samples"], "datasets": datasets,
        "budget": context.config.section("hardware")["memory_budget_gb"],
        "basis": sha256_file(context.run_dir / PROFILE_DIR / name / "basis.safetensors"),
    })


def _read_cached(folder: Path, fingerprint: str, items: list[Any]) -> Pool | None:
    from safetensors.torch import load_file

    meta_path, tensor_path = folder / "pool.json", folder / "pool.safetensors"
    if not (meta_path.is_file() and tensor_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        return None
    tensors = load_file(str(tensor_path))
    outputs = meta["texts"] if meta["texts"] is not None else list(tensors["outputs"])
    tokens = {k: (tensors[f"tokens.{k}"], tensors[f"offsets.{k}"]) for k in meta["aligned"]}
    soft = (tensors["soft.ids"], tensors["soft.logprobs"], tensors["soft.offsets"]) \
        if meta["objective"] in SOFT_OBJECTIVES else None
    return Pool(items, outputs, tensors["coefficients"], tensors["eigenvalues"], meta["teacher_scores"],
                meta["objective"], soft, tokens, meta.get("reason", ""))


def _store_reference(name: str, path: Path, reference: Any) -> None:
    """Write the teacher's reference outputs (named tensors) to `path`, or remove an older
    file there when the owner records none."""
    from safetensors.torch import save

    if reference is None:
        path.unlink(missing_ok=True)
        return
    if not isinstance(reference, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in reference.items()):
        raise StageError(f"{name}: reference_outputs must map names to tensors, got {type(reference).__name__}")
    atomic_write_bytes(path, save({key: value.detach().cpu().contiguous() for key, value in reference.items()}))


def _teacher_precision(parameters: int, profiled: str, budget_gb: float) -> str:
    """The most precise option whose weights fit half of `budget_gb` (this process's share of
    the budget), never below the profiled one."""
    from nexus_kernel.teachers.loading import QUANTIZATION_ORDER, most_precise_fitting

    return max(most_precise_fitting(parameters, budget_gb), profiled, key=QUANTIZATION_ORDER.index)


def _check_plan(name: str, plan: Any) -> None:
    if plan is None:
        raise StageError(f"{name}: its plugin gives no distillation plan (distill_capability returned None)")
    if plan.objective not in OBJECTIVES:
        raise StageError(f"{name}: unknown distillation objective {plan.objective!r} (known: {', '.join(OBJECTIVES)})")
    if plan.objective in SOFT_OBJECTIVES and plan.teacher_distributions is None:
        raise StageError(f"{name}: the {plan.objective} objective needs the plan's teacher_distributions")


def chosen_plan(name: str, plan: Any, text_loss: str) -> Any:
    """`plan` after the capability's locked `text_loss`: "auto" keeps the plugin's choice;
    "uld" or "sequence" ask the plan's `for_objective` for that objective, and "sequence" falls
    back to dropping the teacher's distributions (cross-entropy needs only the completions).
    An embedding (`cosine`) plan, or one that cannot give "uld", is a `StageError` naming the
    capability and the config key."""
    from dataclasses import replace

    if text_loss == "auto" or text_loss == plan.objective:
        return plan
    key = f"[capabilities.{name}] text_loss = {text_loss!r}"
    if plan.objective == "cosine":
        raise StageError(f"{name}: {key} applies to text outputs; this capability distils embeddings (cosine)")
    other = plan.for_objective(text_loss) if plan.for_objective is not None else None
    if other is not None:
        return other
    if text_loss == "sequence":
        return replace(plan, objective="sequence", teacher_distributions=None, for_objective=None,
                       reason=f"sequence: {key}")
    raise StageError(f"{name}: {key}, but its plugin's plan cannot give the teacher's distributions for uld "
                     f"(its objective is {plan.objective}); use text_loss = 'auto' or 'sequence'")


def build_pool(context: RunContext, student: NexusStudent, name: str, plan_without_teacher: Any,
               architecture: Mapping[str, Any], settings: Mapping[str, Any], folder: Path,
               session: TeacherSession) -> Pool:
    """The capability's pool: from the cache when its fingerprint matches, else by loading its
    teacher through `session` (reused when the previous capability had the same one),
    collecting, scoring it on held-out items and caching."""
    from safetensors.torch import save

    from nexus_kernel.teachers.access import run_device
    from nexus_kernel.teachers.registry import TeacherEntry

    capability = bound_capability(context.plugins, context.run_dir, name)
    entry_data = architecture["capabilities"][name]
    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"][name]
    key_layers = [pair["teacher"] for pair in entry_data["layer_map"]]
    items = list(itertools.islice(plan_without_teacher.items(), settings["pool_size"]))
    if len(items) < settings["batch_size"]:
        raise StageError(f"{name}: only {len(items)} training items, fewer than one batch of {settings['batch_size']}")
    fingerprint = _fingerprint(context, name, entry_data, settings, datasets)
    cached = _read_cached(folder, fingerprint, items)
    if cached is not None:
        return cached

    registry = {e["name"]: e for e in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    entry = TeacherEntry.from_json(registry[entry_data["teacher"]])
    profiled = json.loads((context.run_dir / PROFILE_DIR / name / "profile.json").read_text())["load"]["quantization"]
    started = time.perf_counter()
    # Refused before loading: the teacher's pool at the option it gets, next to the student.
    device = run_device(context)
    budget = process_budget(context.config.section("hardware")["memory_budget_gb"], device)
    preferred = _teacher_precision(entry.parameters, profiled, budget)
    option = memory_plan.pool_option(entry.name, Path(entry.path), preferred, profiled, budget, device,
                                     memory_plan.module_bytes(student))
    teacher = session.get(entry, option, device)
    try:
        plan = context.plugins.call_for(name, "distill_capability", capability=capability, teacher=teacher,
                                        student=student, datasets=datasets)
        _check_plan(name, plan)
        plan = chosen_plan(name, plan, settings.get("text_loss", "auto"))
        _check_plan(name, plan)
        basis = read_basis(context.run_dir, name, key_layers, int(entry_data["rank"]))
        collected = _collect(plan, teacher, items, key_layers, basis, f"{name}: teacher answers")
        if not world().main:
            barrier()  # rank 0 scores the teacher on held-out items and writes the pool
            pool = _read_cached(folder, fingerprint, items)
            if pool is None:
                raise StageError(f"{name}: rank {world().rank} found no pool written by rank 0 in {folder}")
            return pool
        held_out = {"split": "test", "datasets": datasets, "limit": settings["eval_samples"]}
        reference = context.plugins.call_for(name, "reference_outputs", capability=capability, teacher=teacher,
                                             **held_out)
        scores = checked_scores(name, capability.benchmarks, context.plugins.call_for(
            name, "retention_metric", capability=capability, model=teacher, reference=reference, **held_out))
        teacher_load = teacher.describe()
    finally:
        del teacher
    _store_reference(name, reference_file(context.run_dir, name), reference)

    whitened, variances = whiten(torch.cat(collected.pooled))
    tensors = {"coefficients": whitened.contiguous(), "eigenvalues": variances.contiguous()}
    tokens = {k: pack_ragged(collected.per_token[k], int(entry_data["rank"])) for k in sorted(collected.aligned)}
    for k, (values, offsets) in tokens.items():
        tensors[f"tokens.{k}"], tensors[f"offsets.{k}"] = values, offsets
    texts = collected.outputs if all(isinstance(output, str) for output in collected.outputs) else None
    outputs: list[Any] = collected.outputs
    if texts is None:
        tensors["outputs"] = torch.stack([torch.as_tensor(output).float() for output in collected.outputs]).contiguous()
        outputs = list(tensors["outputs"])
    soft = None
    reason = plan.reason or PLAIN_REASONS[plan.objective]
    if plan.objective in SOFT_OBJECTIVES:
        soft = pack_distributions(collected.distributions)
        tensors["soft.ids"], tensors["soft.logprobs"], tensors["soft.offsets"] = soft
    atomic_write_bytes(folder / "pool.safetensors", save(tensors))
    atomic_write_json(folder / "pool.json", {
        "fingerprint": fingerprint, "texts": texts, "teacher_scores": scores, "teacher": entry.name,
        "teacher_load": teacher_load, "aligned": sorted(collected.aligned), "objective": plan.objective,
        "reason": reason, "soft_items": sum(row is not None for row in collected.distributions),
        "key_layers": key_layers,
        "seconds": round(time.perf_counter() - started, 2),
    })
    log.info("teacher answered the pool", capability=name, items=len(items), objective=plan.objective,
             seconds=round(time.perf_counter() - started, 1))
    barrier()
    return Pool(items, outputs, tensors["coefficients"], variances, scores, plan.objective, soft, tokens, reason)
