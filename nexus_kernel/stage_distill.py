"""Stage 4, distillation: adapter-first, then (optionally) joint, with anchoring and recovery.

Per capability, with only its teacher loaded: the teacher answers `pool_size` training items
(completion texts or embeddings) and gives, per item, its key layers' mean activation in the
profiled PCA basis, whitened over the pool (the anchor targets); both are cached in
`checkpoints/<capability>/pool.*` and the teacher is unloaded. Its adapter is then trained
with the backbone frozen on `L = L_output + alpha * L_anchor`. The optional joint phase
unfreezes the backbone at a lower learning rate and trains every capability at once, each
capability's anchor protecting its subspace. Training runs under `RecoveringTrainer`
(checkpoints, rollback on spikes and drift, resume). At the end every capability's student
is scored on held-out items next to its teacher (`distill_report.json`).
"""

from __future__ import annotations

import gc
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.errors import StageError
from nexus_kernel.fsio import atomic_write_bytes, atomic_write_json, sha256_file, sha256_json
from nexus_kernel.logs import get_logger
from nexus_kernel.recovery import Journal, RecoveringTrainer, RecoverySettings, named_trainable, summarise
from nexus_kernel.runner import RunContext
from nexus_kernel.student import CapabilityAdapter, NexusStudent, StudentBatch, StudentCapability, masked_mean
from nexus_kernel.text import IGNORE_INDEX, TOP_K

CHECKPOINT_DIR = "checkpoints"
JOURNAL_FILE = "training.jsonl"
REPORT_FILE = "distill_report.json"
STUDENT_FILE = f"{CHECKPOINT_DIR}/student.safetensors"
_TEACHER_BATCH = 64
_CHECK_ITEMS = 128
_EIGEN_FLOOR = 1e-6
OBJECTIVES = ("kl", "sequence", "cosine")

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
    """What the teacher's plan asked for when it was loaded (`kl`, `sequence`, `cosine`)."""
    soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """For `kl`: top-k ids `(positions, k)`, log-probabilities `(positions, k)` and each
    item's offsets into them `(items + 1,)`."""
    tokens: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    """Per key layer whose tokens line up with the student's text tokens: every real token's
    coefficients whitened by the profiled eigenvalues `(tokens, rank)`, and each item's
    offsets into them `(items + 1,)`."""


# anchors -------------------------------------------------------------------------------------


def project(pooled: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Coefficients of `pooled` rows in the PCA basis (`components` rows are unit vectors)."""
    return ((pooled.double() - mean.double()) @ components.double().T).float()


def _floor(eigenvalues: torch.Tensor) -> float:
    return max(float(eigenvalues.max()) * _EIGEN_FLOOR, 1e-12)


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
    from safetensors.torch import load_file

    from nexus_kernel.stage_profile import OUTPUT_DIR

    tensors = load_file(str(run_dir / OUTPUT_DIR / name / "basis.safetensors"))
    return {layer: (tensors[f"{layer}.mean"], tensors[f"{layer}.components"][:rank], tensors[f"{layer}.eigenvalues"][:rank])
            for layer in key_layers}


def layer_activations(model: nn.Module, layers: list[str], batch: Any, forward: Callable[[Any, Any], Any],
                      teacher: str) -> dict[str, torch.Tensor]:
    """Each layer's output on `batch`, `(batch, seq, width)` (or `(batch, width)`)."""
    from nexus_kernel.profiling import _first_tensor, _hooks, modules_named

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


# pools ---------------------------------------------------------------------------------------


def _serialise_outputs(outputs: list[Any]) -> tuple[list[str] | None, torch.Tensor | None]:
    if all(isinstance(output, str) for output in outputs):
        return list(outputs), None
    return None, torch.stack([torch.as_tensor(output).float() for output in outputs])


def build_pool(context: RunContext, student: NexusStudent, name: str, plan_without_teacher: Any,
               architecture: Mapping[str, Any], settings: Mapping[str, Any], folder: Path) -> Pool:
    """Load the capability's teacher, collect its answers and anchor targets on the training
    pool and its held-out score, cache them in `folder`, unload it. A cached pool with the
    same fingerprint is reused."""
    from safetensors.torch import load_file, save

    from nexus_kernel.loading import QUANTIZATION_ORDER, most_precise_fitting
    from nexus_kernel.lock import LOCK_FILE
    from nexus_kernel.pipeline import REGISTRY_FILE
    from nexus_kernel.registry import TeacherEntry
    from nexus_kernel.stage_profile import OUTPUT_DIR, load_teacher, run_device

    capability, _ = context.plugins.capabilities()[name]
    entry_data = architecture["capabilities"][name]
    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"][name]
    profile = json.loads((context.run_dir / OUTPUT_DIR / name / "profile.json").read_text())
    key_layers = [pair["teacher"] for pair in entry_data["layer_map"]]
    rank = int(entry_data["rank"])
    fingerprint = sha256_json({"format": 6, "entry": entry_data, "budget": context.config.section("hardware")["memory_budget_gb"], "pool_size": settings["pool_size"],
                               "eval_samples": settings["eval_samples"], "datasets": datasets,
                               "basis": sha256_file(context.run_dir / OUTPUT_DIR / name / "basis.safetensors")})
    meta_path, tensor_path = folder / "pool.json", folder / "pool.safetensors"
    items = list(itertools.islice(plan_without_teacher.items(), settings["pool_size"]))
    if len(items) < settings["batch_size"]:
        raise StageError(f"{name}: only {len(items)} training items, fewer than one batch of {settings['batch_size']}")
    if meta_path.is_file() and tensor_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] == fingerprint:
            tensors = load_file(str(tensor_path))
            outputs = meta["texts"] if meta["texts"] is not None else list(tensors["outputs"])
            tokens = {k: (tensors[f"tokens.{k}"], tensors[f"offsets.{k}"]) for k in meta["aligned"]}
            soft = ((tensors["soft.ids"], tensors["soft.logprobs"], tensors["soft.offsets"])
                    if meta["objective"] == "kl" else None)
            return Pool(items, outputs, tensors["coefficients"], tensors["eigenvalues"], meta["teacher_scores"],
                        meta["objective"], soft, tokens)
    registry = {e["name"]: e for e in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    entry = TeacherEntry.from_json(registry[entry_data["teacher"]])
    started = time.perf_counter()
    precision = most_precise_fitting(entry.parameters, context.config.section("hardware")["memory_budget_gb"])
    if QUANTIZATION_ORDER.index(precision) < QUANTIZATION_ORDER.index(profile["load"]["quantization"]):
        precision = profile["load"]["quantization"]  # what profiling found to work, if it is more precise
    teacher = load_teacher(context, entry, precision, run_device(context))
    try:
        plan = context.plugins.call_for(name, "distill_capability", capability=capability, teacher=teacher,
                                        student=student, datasets=datasets)
        if plan is None:
            raise StageError(f"{name}: its plugin gives no distillation plan (distill_capability returned None)")
        if plan.objective not in OBJECTIVES:
            raise StageError(f"{name}: unknown distillation objective {plan.objective!r} (known: {', '.join(OBJECTIVES)})")
        if plan.objective == "kl" and plan.teacher_distributions is None:
            raise StageError(f"{name}: the kl objective needs the plan's teacher_distributions")
        soft_rows: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        basis = read_basis(context.run_dir, name, key_layers, rank)
        outputs: list[Any] = []
        coefficients: list[torch.Tensor] = []
        per_token: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(key_layers))}
        aligned = set(per_token)
        with _bar(len(items), f"{name}: teacher answers") as bar:
            for start in range(0, len(items), _TEACHER_BATCH):
                chunk = items[start : start + _TEACHER_BATCH]
                with torch.inference_mode():
                    answers = plan.teacher_outputs(chunk)
                    batch = plan.teacher_batch(chunk, answers)
                mask = plan.mask_of(batch) if plan.mask_of is not None else None
                student_mask = plan.student_batch(chunk, answers).attention_mask
                found = layer_activations(teacher.model, key_layers, batch, plan.teacher_forward, entry.name)
                pooled = []
                for k, layer in enumerate(key_layers):
                    pooled.append(project(masked_mean(found[layer], mask), *basis[layer][:2]))
                    rows = real_tokens(found[layer], mask)
                    lengths = [len(item) for item in rows]
                    if student_mask is None or lengths != student_mask.sum(dim=1).tolist():
                        aligned.discard(k)
                    if k in aligned:
                        mean, components, eigenvalues = basis[layer]
                        per_token[k] += [project(item, mean, components) / eigenvalues.clamp(min=_floor(eigenvalues)).sqrt()
                                         for item in rows]
                coefficients.append(torch.stack(pooled, dim=1))
                if plan.objective == "kl":
                    soft_rows += plan.teacher_distributions(chunk, answers)
                outputs += answers
                bar.update(len(chunk))
        teacher_scores = context.plugins.call_for(name, "retention_metric", capability=capability,
                                                  model=teacher, split="test", datasets=datasets,
                                                  limit=settings["eval_samples"])
        teacher_load = teacher.describe()
    finally:
        del teacher
        gc.collect()
    if teacher_scores is None:
        raise StageError(f"{name}: its plugin gives no retention_metric")
    texts, rows = _serialise_outputs(outputs)
    whitened, eigenvalues = whiten(torch.cat(coefficients))
    tensors = {"coefficients": whitened.contiguous(), "eigenvalues": eigenvalues.contiguous()}
    tokens = {}
    for k in sorted(aligned):
        lengths = torch.tensor([0] + [len(item) for item in per_token[k]])
        tokens[k] = (torch.cat(per_token[k]).contiguous(), lengths.cumsum(dim=0))
        tensors[f"tokens.{k}"], tensors[f"offsets.{k}"] = tokens[k]
    if rows is not None:
        tensors["outputs"] = rows.contiguous()
    soft = None
    if plan.objective == "kl":
        soft = pack_distributions(soft_rows)
        tensors["soft.ids"], tensors["soft.logprobs"], tensors["soft.offsets"] = soft
    scores = {key: score.to_json() for key, score in teacher_scores.items()}
    atomic_write_bytes(tensor_path, save(tensors))
    atomic_write_json(meta_path, {"fingerprint": fingerprint, "texts": texts, "teacher_scores": scores,
                                  "teacher": entry.name, "teacher_load": teacher_load,
                                  "aligned": sorted(aligned), "objective": plan.objective,
                                  "kl_items": sum(row is not None for row in soft_rows),
                                  "key_layers": key_layers, "seconds": round(time.perf_counter() - started, 2)})
    log.info("teacher answered the pool", capability=name, items=len(items),
             seconds=round(time.perf_counter() - started, 1))
    return Pool(items, outputs if texts is not None else list(rows), tensors["coefficients"],  # type: ignore[arg-type]
                eigenvalues, scores, plan.objective, soft, tokens)


def pack_distributions(rows: list[tuple[torch.Tensor, torch.Tensor] | None]) -> tuple[torch.Tensor, ...]:
    """Per-item teacher distributions as `(ids, log-probabilities, offsets)`; an item without
    one (its tokenizations disagree) gets zero length and is trained with cross-entropy."""
    present = [row for row in rows if row is not None]
    lengths = torch.tensor([0] + [0 if row is None else len(row[0]) for row in rows])
    ids = torch.cat([ids for ids, _ in present]) if present else torch.zeros(0, TOP_K, dtype=torch.long)
    values = torch.cat([values for _, values in present]).float() if present else torch.zeros(0, TOP_K)
    return ids.contiguous(), values.contiguous(), lengths.cumsum(dim=0)


def _bar(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="item", dynamic_ncols=True, leave=False)


# losses --------------------------------------------------------------------------------------


def default_anchor_loss(projected: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the projected student state and the whitened coefficients."""
    return nn.functional.mse_loss(projected, coefficients)


@dataclass
class CapabilityTask:
    """Everything one capability's training steps need."""

    name: str
    capability: Any
    plan: Any
    pool: Pool
    order_seed: int
    alpha_scale: float = 1.0

    def batch(self, step: int, size: int) -> StudentBatch:
        """The batch of `step`: a seeded permutation of the pool per epoch, so the batch
        depends on the step number alone (what makes resuming exact)."""
        per_epoch = max(1, len(self.pool.items) // size)
        epoch, offset = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(self.order_seed * 100_003 + epoch)
        order = torch.randperm(len(self.pool.items), generator=generator)[offset * size : (offset + 1) * size].tolist()
        return self.collate(order)

    def collate(self, order: list[int]) -> StudentBatch:
        """The student batch of pool items `order`, with their anchor targets."""
        batch = self.plan.student_batch([self.pool.items[i] for i in order], [self.pool.outputs[i] for i in order])
        batch.anchor = {k: self.pool.coefficients[order, k] for k in range(self.pool.coefficients.shape[1])}
        if self.pool.soft is not None:
            ids, logprobs, offsets = self.pool.soft
            wanted = batch.labels != IGNORE_INDEX  # type: ignore[operator]
            wanted[:, 0] = False
            batch.soft_ids = torch.zeros(*wanted.shape, ids.shape[1], dtype=torch.long)
            batch.soft_logprobs = torch.full((*wanted.shape, ids.shape[1]), -1e9)
            for row, index in enumerate(order):
                start, end = int(offsets[index]), int(offsets[index + 1])
                if end > start:
                    batch.soft_ids[row][wanted[row]] = ids[start:end]
                    batch.soft_logprobs[row][wanted[row]] = logprobs[start:end]
                else:  # no teacher distribution for this item: all mass on its label (cross-entropy)
                    batch.soft_ids[row, :, 0] = batch.labels[row].clamp(min=0)  # type: ignore[index]
                    batch.soft_logprobs[row, :, 0] = 0.0
        for k, (values, offsets) in self.pool.tokens.items():
            mask = batch.attention_mask
            target = torch.zeros(*mask.shape, values.shape[1])
            for row, index in enumerate(order):
                target[row][mask[row].bool()] = values[offsets[index] : offsets[index + 1]]
            batch.token_anchor[k] = target
        return batch


AnchorOverride = Callable[[CapabilityTask, torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""`(task, projected, coefficients, eigenvalues) -> loss or None`: the owner's `anchor_loss`."""


def plugin_anchor_loss(context: RunContext) -> AnchorOverride:
    """Ask the capability's owner for its `anchor_loss` (None: the kernel default)."""
    def ask(task: CapabilityTask, projected: torch.Tensor, target: torch.Tensor, eigenvalues: torch.Tensor) -> Any:
        return context.plugins.call_for(task.name, "anchor_loss", capability=task.capability,
                                        student_hidden=projected, teacher_coefficients=target, eigenvalues=eigenvalues)
    return ask


def anchor_pairs(adapter: CapabilityAdapter, output: Any, batch: StudentBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per key layer, `(projected student state, teacher coefficients)` as `(n, rank)` rows:
    every real text token where the teacher's tokens line up with the student's, else one
    row per item (sequence means)."""
    pairs = []
    for index, layer in enumerate(adapter.spec.anchored_layers):
        projection = adapter.anchors[str(index)]
        if index in batch.token_anchor and layer in output.text_hidden:
            real = batch.attention_mask.bool()  # type: ignore[union-attr]
            pairs.append((projection(output.text_hidden[layer][real]), batch.token_anchor[index][real]))
        else:
            pairs.append((projection(output.pooled[layer]), batch.anchor[index]))
    return pairs


def task_loss(student: NexusStudent, task: CapabilityTask, batch: StudentBatch, alpha: float,
              anchor_override: AnchorOverride | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """`L_output + alpha * L_anchor` of one capability on one batch, and the two parts."""
    output = student(task.name, batch)
    adapter: CapabilityAdapter = student.adapters[task.name]  # type: ignore[assignment]
    if task.pool.objective == "kl":
        assert output.logits is not None and batch.soft_ids is not None and batch.labels is not None
        wanted = (batch.labels != IGNORE_INDEX)[:, 1:]
        student_logprobs = torch.log_softmax(output.logits[:, :-1][wanted], dim=-1)
        teacher = torch.softmax(batch.soft_logprobs[:, 1:][wanted], dim=-1)  # type: ignore[index]
        output_loss = -(teacher * student_logprobs.gather(1, batch.soft_ids[:, 1:][wanted])).sum(dim=-1).mean()
    elif task.pool.objective == "sequence":
        assert output.logits is not None and batch.labels is not None
        output_loss = nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),
                                                  ignore_index=IGNORE_INDEX)
    elif task.pool.objective == "cosine":
        assert output.embedding is not None and batch.target is not None
        output_loss = (1 - nn.functional.cosine_similarity(output.embedding, batch.target, dim=-1)).mean()
    else:
        raise StageError(f"{task.name}: unknown distillation objective {task.pool.objective!r}")
    anchors = []
    for index, (projected, target) in enumerate(anchor_pairs(adapter, output, batch)):
        custom = anchor_override(task, projected, target, task.pool.eigenvalues[index]) if anchor_override else None
        anchors.append(custom if custom is not None else default_anchor_loss(projected, target))
    anchor_loss = torch.stack(anchors).mean() if anchors else torch.zeros(())
    return output_loss + alpha * anchor_loss, {f"{task.name}.output": float(output_loss.detach()),
                                               f"{task.name}.anchor": float(anchor_loss.detach())}


def reconstruction(student: NexusStudent, task: CapabilityTask) -> float:
    """Share of the teacher's (whitened) subspace variance that the student's anchor
    projections explain on the first pool items: 1 - residual / total, averaged over layers."""
    size = min(_CHECK_ITEMS, len(task.pool.items))
    batch = task.collate(list(range(size)))
    adapter: CapabilityAdapter = student.adapters[task.name]  # type: ignore[assignment]
    with torch.no_grad():
        output = student(task.name, batch)
        shares = []
        for projected, target in anchor_pairs(adapter, output, batch):
            total = float(((target - target.mean(dim=0)) ** 2).sum())
            residual = float(((projected - target) ** 2).sum())
            shares.append(1.0 - residual / total if total > 0 else 0.0)
    return sum(shares) / len(shares) if shares else 0.0


# gradient health -------------------------------------------------------------------------------


def gradient_health(student: NexusStudent, trained: Mapping[str, nn.Module], loss: torch.Tensor,
                    backbone_frozen: bool) -> dict[str, Any]:
    """Backpropagate `loss` once and check that every trained adapter gets finite gradients
    that are not all zero, and that a frozen backbone gets none. Raises a `StageError` naming
    what is wrong; returns the gradient norms."""
    student.zero_grad(set_to_none=True)
    loss.backward()
    norms: dict[str, float] = {}
    for name, adapter in trained.items():
        grads = [p.grad for p in adapter.parameters() if p.requires_grad]
        missing = [n for n, p in adapter.named_parameters() if p.requires_grad and p.grad is None]
        if missing and not any(g is not None for g in grads):
            raise StageError(f"gradient check: no gradient reaches the adapter of {name!r} ({', '.join(missing[:4])})")
        total = torch.stack([g.float().norm() for g in grads if g is not None]).norm()
        if not torch.isfinite(total):
            raise StageError(f"gradient check: the adapter of {name!r} gets non-finite gradients")
        if float(total) == 0.0:
            raise StageError(f"gradient check: every gradient of the adapter of {name!r} is zero")
        norms[name] = float(total)
    leaked = [n for n, p in student.backbone.named_parameters() if p.grad is not None]
    if backbone_frozen and leaked:
        raise StageError(f"gradient check: the frozen backbone gets gradients ({', '.join(leaked[:4])})")
    if not backbone_frozen:
        grads = [p.grad.float().norm() for p in student.backbone.parameters() if p.grad is not None]
        backbone_norm = torch.stack(grads).norm() if grads else torch.zeros(())
        if not grads or not torch.isfinite(backbone_norm):
            raise StageError("gradient check: the unfrozen backbone gets no finite gradient")
        norms["backbone"] = float(backbone_norm)
    student.zero_grad(set_to_none=True)
    return norms


# phases ----------------------------------------------------------------------------------------


def _recovery(settings: Mapping[str, Any]) -> RecoverySettings:
    return RecoverySettings(checkpoint_every=settings["checkpoint_every"], check_every=settings["check_every"],
                            spike_factor=settings["spike_factor"], drift_threshold=settings["drift_threshold"],
                            alpha_escalation=settings["alpha_escalation"], lr_backoff=settings["lr_backoff"],
                            max_rollbacks=settings["max_rollbacks"])


def _progress(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", dynamic_ncols=True, leave=False)


REVISIT_EVERY = 4
CONVERGED_LOSS = 0.02


def converged(name: str, running: Mapping[str, float]) -> bool:
    """Whether a capability's running output loss (nats per token, or cosine distance) is below
    `CONVERGED_LOSS`: in the joint phase it is then trained only every `REVISIT_EVERY` steps
    (its anchor still protecting its subspace there), and fully again if its loss climbs back."""
    return name in running and running[name] < CONVERGED_LOSS


def train_phase(context: RunContext, student: NexusStudent, tasks: list[CapabilityTask], phase: str,
                steps: int, learning_rate: float, frozen: bool, settings: Mapping[str, Any],
                fingerprint: Any) -> dict[str, Any]:
    """One phase: the adapters of `tasks` (and the backbone unless `frozen`) trained for
    `steps` on the sum of the tasks' losses; returns the phase's summary."""
    student.freeze_backbone(frozen)
    for name, adapter in student.adapters.items():
        adapter.requires_grad_(any(task.name == name for task in tasks))
    modules = [(f"adapters.{task.name}", student.adapters[task.name]) for task in tasks]
    if not frozen:
        modules.append(("backbone", student.backbone))
    parameters = named_trainable(modules)
    journal = Journal(context.run_dir / JOURNAL_FILE, phase)
    size = settings["batch_size"]
    anchor_override = plugin_anchor_loss(context)

    def step_loss(step: int, alpha: float, extra: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        running = extra.setdefault("output_loss", {})
        total = torch.zeros(())
        parts: dict[str, float] = {}
        for task in tasks:
            if len(tasks) > 1 and step % REVISIT_EVERY and converged(task.name, running):
                continue
            loss, task_parts = task_loss(student, task, task.batch(step, size), alpha * task.alpha_scale,
                                         anchor_override)
            value = task_parts[f"{task.name}.output"]
            running[task.name] = value if task.name not in running else 0.9 * running[task.name] + 0.1 * value
            total = total + loss
            parts.update(task_parts)
        return total, parts

    def check() -> float:
        return sum(reconstruction(student, task) for task in tasks) / len(tasks)

    torch.set_num_threads(settings["threads"])
    student.train()
    first, _ = step_loss(0, settings["alpha"], {})
    norms = gradient_health(student, dict(modules[: len(tasks)]), first, frozen)  # type: ignore[arg-type]
    journal.write("gradient_check", norms=norms, backbone_frozen=frozen)
    folder = context.run_dir / CHECKPOINT_DIR / phase
    with _progress(steps, f"distilling {phase}") as bar:
        trainer = RecoveringTrainer(student, parameters, step_loss, steps, learning_rate, folder, journal,
                                    _recovery(settings), settings["alpha"], check=check, fingerprint=fingerprint,
                                    progress=bar.update)
        state = trainer.run()
    explained = check()
    journal.write("end", step=state.step, reconstruction=explained, events=state.events)
    return {"steps": state.step, "reconstruction": explained, "alpha": state.alpha, "lr_scale": state.lr_scale,
            "rollbacks": state.rollbacks, "events": state.events, "skipped_steps": state.skipped}


def save_weights(module: nn.Module, path: Path) -> None:
    """`module`'s state as safetensors, written atomically."""
    from safetensors.torch import save

    state = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
    atomic_write_bytes(path, save(state))


def load_weights(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    module.load_state_dict(load_file(str(path)))


def _phase_done(folder: Path, fingerprint: str) -> bool:
    done = folder / "done.json"
    return done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint


def retention(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> dict[str, Any]:
    """The headline ratio student / teacher; "not measurable" when the teacher is at or near
    chance (within a tenth of the way from chance to perfect)."""
    margin = 0.1 * (1 - teacher["chance"])
    if teacher["value"] <= teacher["chance"] + margin:
        return {"status": "not measurable", "ratio": None,
                "why": f"teacher {teacher['value']:.3f} is at or near chance {teacher['chance']:.3f}"}
    ratio = student["value"] / teacher["value"]
    return {"status": "pass" if ratio >= 0.97 else "below 0.97", "ratio": ratio}


def _prepare_tasks(context: RunContext, student: NexusStudent, architecture: Mapping[str, Any],
                   settings: Mapping[str, Any], seed: int) -> dict[str, CapabilityTask]:
    """Per capability, in name order: its plan (without the teacher) and its pool (built with
    the teacher, one at a time, or read from the cache)."""
    from nexus_kernel.lock import LOCK_FILE

    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"]
    tasks = {}
    for index, name in enumerate(sorted(architecture["capabilities"])):
        capability, _ = context.plugins.capabilities()[name]
        plan = context.plugins.call_for(name, "distill_capability", capability=capability, teacher=None,
                                        student=student, datasets=datasets[name])
        if plan is None:
            raise StageError(f"{name}: its plugin gives no distillation plan (distill_capability returned None)")
        pool = build_pool(context, student, name, plan, architecture, settings,
                          context.run_dir / CHECKPOINT_DIR / name)
        scale = context.config.capability_settings(name).get("alpha_scale")
        tasks[name] = CapabilityTask(name, capability, plan, pool, seed + index,
                                     capability.alpha_scale if scale is None else scale)
    return tasks


def _phase(context: RunContext, student: NexusStudent, tasks: list[CapabilityTask], phase: str,
           frozen: bool, settings: Mapping[str, Any], fingerprint: str, weights: nn.Module, seed: int) -> dict[str, Any]:
    """Run one phase, or reuse its result when `done.json` has this fingerprint; the phase's
    final `weights` (the adapter, or the whole student) are saved next to it."""
    from nexus_kernel.training import seed_everything

    folder = context.run_dir / CHECKPOINT_DIR / phase
    final = folder / "final.safetensors"
    if _phase_done(folder, fingerprint) and final.is_file():
        load_weights(weights, final)
        return json.loads((folder / "done.json").read_text())["summary"]  # type: ignore[no-any-return]
    seed_everything(seed)
    steps, rate = ((settings["adapter_steps"], settings["learning_rate"]) if frozen
                   else (settings["joint_steps"], settings["joint_learning_rate"]))
    summary = train_phase(context, student, tasks, phase, steps, rate, frozen, settings, fingerprint)
    save_weights(weights, final)
    atomic_write_json(folder / "done.json", {"fingerprint": fingerprint, "summary": summary})
    return summary


def _score(context: RunContext, student: NexusStudent, task: CapabilityTask, settings: Mapping[str, Any]
           ) -> dict[str, Any]:
    """The student's held-out scores next to its teacher's, and the retention verdict."""
    from nexus_kernel.lock import LOCK_FILE

    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"][task.name]
    scores = context.plugins.call_for(task.name, "retention_metric", capability=task.capability,
                                      model=StudentCapability(student, task.name), split="test",
                                      datasets=datasets, limit=settings["eval_samples"])
    student_scores = {key: score.to_json() for key, score in scores.items()}
    headline = next(iter(task.pool.teacher_scores))
    verdict = retention(task.pool.teacher_scores[headline], student_scores[headline])
    log.info("held-out", capability=task.name, benchmark=headline, teacher=task.pool.teacher_scores[headline]["value"],
             student=student_scores[headline]["value"], **verdict)
    return {"benchmark": headline, "teacher": task.pool.teacher_scores, "student": student_scores,
            "retention": verdict}


def run_distill(context: RunContext) -> str:
    """Stage 4 (see the module docstring)."""
    from nexus_kernel.lock import LOCK_FILE
    from nexus_kernel.stage_architecture import ARCHITECTURE_FILE, build_student

    architecture = json.loads((context.run_dir / ARCHITECTURE_FILE).read_text())
    settings = context.config.section("distill")
    seed = int(json.loads((context.run_dir / LOCK_FILE).read_text())["seed"])
    student = build_student(context, architecture)
    tasks = _prepare_tasks(context, student, architecture, settings, seed)
    base = {"architecture": architecture, "distill": settings, "seed": seed}
    phases: dict[str, Any] = {}
    adapters = {}
    for name, task in tasks.items():
        phase = f"adapter-{name}"
        fingerprint = sha256_json({**base, "phase": phase, "pool": task.pool.teacher_scores})
        phases[phase] = _phase(context, student, [task], phase, True, settings, fingerprint,
                               student.adapters[name], seed)
        adapters[name] = sha256_file(context.run_dir / CHECKPOINT_DIR / phase / "final.safetensors")
    if settings["joint_steps"]:
        fingerprint = sha256_json({**base, "phase": "joint", "adapters": adapters})
        phases["joint"] = _phase(context, student, list(tasks.values()), "joint", False, settings, fingerprint,
                                 student, seed)
    student.eval()
    report = {"phases": phases, "events": summarise(context.run_dir / JOURNAL_FILE),
              "capabilities": {name: _score(context, student, task, settings) for name, task in tasks.items()}}
    save_weights(student, context.run_dir / STUDENT_FILE)
    atomic_write_json(context.run_dir / REPORT_FILE, report)
    lines = []
    for name, entry in report["capabilities"].items():
        verdict, headline = entry["retention"], entry["benchmark"]
        shown = f"{verdict['ratio']:.3f}" if verdict["ratio"] is not None else verdict["status"]
        lines.append(f"{name} {entry['student'][headline]['value']:.3f}/{entry['teacher'][headline]['value']:.3f} ({shown})")
    return "student/teacher: " + ", ".join(lines)
