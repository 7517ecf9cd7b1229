"""Stage 4, distillation: adapter-first, then (optionally) joint, with anchoring and recovery.

Per capability, one teacher at a time, `distill_pool.build_pool` collects the teacher's
answers and anchor targets on the training items. Each adapter is then trained with the
backbone frozen on `L = L_output + alpha * L_anchor`, `L_output` by the pool's objective (`kl`,
`uld`, `sequence` or `cosine`; `distill_report.json` says which each capability used and why). The joint phase unfreezes the backbone
and trains every capability at once, each capability's anchor protecting its subspace.
Training runs under `RecoveringTrainer` (checkpoints, rollback on spikes and drift, resume).
At the end every capability's student is scored on held-out items next to its teacher
(`distill_report.json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel import defaults
from nexus_kernel.algorithms import memory_plan
from nexus_kernel.algorithms.recovery import (
    Journal,
    RecoveringTrainer,
    RecoverySettings,
    full_tensor,
    named_trainable,
    summarise,
)
from nexus_kernel.algorithms.retention import checked_scores, headline_benchmark, read_reference, verdict
from nexus_kernel.algorithms.uld import ULD_WEIGHT, aligned_by_index, uld_distance
from nexus_kernel.errors import StageError
from nexus_kernel.run.distributed import all_sum, barrier, cpu_threads, first_failure, process_budget, world
from nexus_kernel.run.fsio import (
    atomic_write_json,
    sha256_file,
    sha256_json,
)
from nexus_kernel.run.layout import (
    ARCHITECTURE_FILE,
    CHECKPOINT_DIR,
    DISTILL_REPORT,
    LOCK_FILE,
    REGISTRY_FILE,
    STUDENT_FILE,
    TRAINING_JOURNAL,
)
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import progress
from nexus_kernel.run.runner import RunContext
from nexus_kernel.run.seeding import seed_everything
from nexus_kernel.run.settings import locked_settings
from nexus_kernel.stages.distill_pool import Pool, build_pool, read_basis, token_scale
from nexus_kernel.student.decoding import IGNORE_INDEX
from nexus_kernel.student.model import (
    CapabilityAdapter,
    NexusStudent,
    StudentBatch,
    StudentCapability,
)
from nexus_kernel.student.weights import load_weights, save_weights
from nexus_kernel.teachers.binding import bound_capability

_CHECK_ITEMS = 128

log = get_logger("distill")


# losses --------------------------------------------------------------------------------------


@dataclass
class CapabilityTask:
    """Everything one capability's training steps need."""

    name: str
    capability: Any
    plan: Any
    pool: Pool
    order_seed: int
    alpha_scale: float
    """The capability's locked `alpha_scale` (no default here: the lock's is the only one)."""

    def batch(self, step: int, size: int, whole: bool = False) -> StudentBatch:
        """This rank's rows of the batch of `step` (`whole`: every rank's rows): a seeded
        permutation of the pool per epoch, and the plan's `augment` of the whole batch drawn
        from a generator seeded by the step, so the batch depends on the step number alone
        (what makes resuming exact) and the ranks' shares (round-robin rows, `World.shard`)
        make up the one-process batch. A batch with fewer rows than ranks is refused."""
        per_epoch = max(1, len(self.pool.items) // size)
        epoch, offset = divmod(step, per_epoch)
        generator = torch.Generator().manual_seed(self.order_seed * 100_003 + epoch)
        order = torch.randperm(len(self.pool.items), generator=generator)[offset * size : (offset + 1) * size].tolist()
        items = [self.pool.items[i] for i in order]
        if self.plan.augment is not None:
            items = self.plan.augment(items, torch.Generator().manual_seed(self.order_seed * 1_000_003 + step + 1))
            if len(items) != len(order):
                raise StageError(f"{self.name}: the plan's augment returned {len(items)} items for {len(order)}")
        here = world()
        if whole or not here.active:
            return self.collate(order, items)
        if len(order) < here.size:
            raise StageError(f"{self.name}: a batch of {len(order)} rows (distill.batch_size = {size}, "
                             f"{len(self.pool.items)} pool items) cannot give each of {here.size} ranks a row: "
                             f"raise distill.batch_size to {here.size} or more, or start fewer processes")
        return self.collate(here.shard(order), here.shard(items))

    def collate(self, order: list[int], items: list[Any] | None = None) -> StudentBatch:
        """The student batch of pool items `order` (or of `items`, their augmented versions),
        with their anchor targets."""
        items = [self.pool.items[i] for i in order] if items is None else items
        batch = self.plan.student_batch(items, [self.pool.outputs[i] for i in order])
        batch.anchor = {k: self.pool.coefficients[order, k] for k in range(self.pool.coefficients.shape[1])}
        if self.pool.soft is not None and self.pool.objective == "uld":
            self._uld_targets(batch, order)
        elif self.pool.soft is not None:
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

    def _uld_targets(self, batch: StudentBatch, order: list[int]) -> None:
        """The teacher's sorted top-k log-probabilities at its own completion positions,
        `(batch, longest, k)` (-inf beyond each item's `soft_lengths`)."""
        assert self.pool.soft is not None
        _, logprobs, offsets = self.pool.soft
        lengths = torch.tensor([int(offsets[i + 1] - offsets[i]) for i in order], dtype=torch.long)
        batch.soft_lengths = lengths
        batch.soft_logprobs = torch.full((len(order), max(1, int(lengths.max())), logprobs.shape[1]), -math.inf)
        for row, index in enumerate(order):
            batch.soft_logprobs[row, : int(lengths[row])] = logprobs[int(offsets[index]) : int(offsets[index + 1])]


AnchorLoss = Callable[[CapabilityTask, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`(task, projected, coefficients, eigenvalues) -> loss`: the `anchor_loss` hook's answer."""


def plugin_anchor_loss(context: RunContext) -> AnchorLoss:
    """The `anchor_loss` hook: the owner's answer, else the kernel default's (mean squared error)."""
    def ask(task: CapabilityTask, projected: torch.Tensor, target: torch.Tensor, eigenvalues: torch.Tensor) -> Any:
        loss = context.plugins.call_for(task.name, "anchor_loss", capability=task.capability,
                                        student_hidden=projected, teacher_coefficients=target, eigenvalues=eigenvalues)
        if loss is None:
            raise StageError(f"{task.name}: no plugin answers anchor_loss")
        return loss
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


def _shares(counts: list[int]) -> list[float]:
    """Per loss term, what this rank's mean over its `counts[i]` units (tokens, items, rows)
    is multiplied by so that DistributedDataParallel's average over ranks is the mean over
    every rank's units: `world size x local count / global count` (0 for a term no rank has)."""
    size = world().size
    totals = all_sum(torch.tensor(counts, dtype=torch.float64)).tolist()
    return [size * count / total if total > 0 else 0.0 for count, total in zip(counts, totals, strict=True)]


def scaled_by_shares(terms: list[torch.Tensor], counts: list[int], shares: list[float]) -> list[torch.Tensor]:
    """Each loss term times its rank's share (`_shares`). A term with no units on this rank
    is a mean over nothing, NaN, and NaN x 0 is still NaN: it becomes 0 (its gradient reaches
    no parameter either way), so one rank's empty term does not poison the summed loss."""
    return [(term.nan_to_num(0.0) if count == 0 else term) * share
            for term, count, share in zip(terms, counts, shares, strict=True)]


def task_loss(student: NexusStudent, task: CapabilityTask, batch: StudentBatch, alpha: float,
              anchor_loss_of: AnchorLoss | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """`L_output + alpha * L_anchor` of one capability on one batch, and the two parts;
    `anchor_loss_of` gives each layer's anchor loss (None: the kernel default, mean squared
    error).

    Under torchrun `batch` is this rank's share: each mean (output over its tokens or items,
    each anchor layer over its rows) is scaled by `_shares`, so the mean of the ranks' losses
    is the loss of the whole batch, and the parts reported are the whole batch's (a plugin's
    `anchor_loss` is taken as a mean over its rows)."""
    output = student(task.name, batch)
    adapter: CapabilityAdapter = student.adapters[task.name]  # type: ignore[assignment]
    terms: list[torch.Tensor] = []
    counts: list[int] = []
    if task.pool.objective == "kl":
        assert output.logits is not None and batch.soft_ids is not None and batch.labels is not None
        wanted = (batch.labels != IGNORE_INDEX)[:, 1:]
        student_logprobs = torch.log_softmax(output.logits[:, :-1][wanted], dim=-1)
        teacher = torch.softmax(batch.soft_logprobs[:, 1:][wanted], dim=-1)  # type: ignore[index]
        terms.append(-(teacher * student_logprobs.gather(1, batch.soft_ids[:, 1:][wanted])).sum(dim=-1).mean())
        counts.append(int(wanted.sum()))
    elif task.pool.objective in ("sequence", "uld"):
        assert output.logits is not None and batch.labels is not None
        terms.append(nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE_INDEX))
        counts.append(int((batch.labels[:, 1:] != IGNORE_INDEX).sum()))
        if task.pool.objective == "uld":
            assert batch.soft_logprobs is not None and batch.soft_lengths is not None
            wanted = batch.labels[:, 1:] != IGNORE_INDEX
            terms.append(uld_distance(output.logits[:, :-1], wanted, batch.soft_logprobs.exp(), batch.soft_lengths))
            counts.append(int(aligned_by_index(wanted, batch.soft_lengths)[0].sum()))
    elif task.pool.objective == "cosine":
        assert output.embedding is not None and batch.target is not None
        terms.append((1 - nn.functional.cosine_similarity(output.embedding, batch.target, dim=-1)).mean())
        counts.append(len(output.embedding))
    else:
        raise StageError(f"{task.name}: unknown distillation objective {task.pool.objective!r}")
    anchors = []
    for index, (projected, target) in enumerate(anchor_pairs(adapter, output, batch)):
        anchors.append(anchor_loss_of(task, projected, target, task.pool.eigenvalues[index]) if anchor_loss_of
                       else defaults.anchor_loss(projected, target))
        counts.append(len(projected))
    if world().active:
        weighted = scaled_by_shares([*terms, *anchors], counts, _shares(counts))
        terms, anchors = weighted[: len(terms)], weighted[len(terms):]
    output_loss = terms[0] if len(terms) == 1 else terms[0] + ULD_WEIGHT * terms[1]
    anchor_loss = torch.stack(anchors).mean() if anchors else torch.zeros(())
    reported = [float(output_loss.detach()), float(anchor_loss.detach())]
    if world().active:
        reported = (all_sum(torch.tensor(reported, dtype=torch.float64)) / world().size).tolist()
    return output_loss + alpha * anchor_loss, {f"{task.name}.output": reported[0], f"{task.name}.anchor": reported[1]}


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
                    backbone_frozen: bool, unused: list[str] | None = None) -> dict[str, Any]:
    """Backpropagate `loss` once and check that every trained adapter gets finite gradients
    that are not all zero, and that a frozen backbone gets none. Raises a `StageError` naming
    what is wrong; returns the gradient norms. `unused`, when given, receives the names of the
    trainable parameters the loss did not reach."""
    student.zero_grad(set_to_none=True)
    loss.backward()
    if unused is not None:
        unused += [name for name, parameter in student.named_parameters()
                   if parameter.requires_grad and parameter.grad is None]
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


def agreed_gradient_health(student: NexusStudent, trained: Mapping[str, nn.Module], loss: torch.Tensor,
                           backbone_frozen: bool, unused: list[str] | None = None) -> dict[str, Any]:
    """`gradient_health` on every rank's own batch, one verdict for all: when it fails on any
    rank, every rank raises that rank's `StageError` (one alone would leave the others waiting
    in the next collective). The norms are this rank's."""
    norms: dict[str, Any] = {}
    failure = None
    try:
        norms = gradient_health(student, trained, loss, backbone_frozen, unused)
    except StageError as exc:
        failure = str(exc)
    failure = first_failure(failure)
    if failure is not None:
        raise StageError(failure)
    return norms


# phases ----------------------------------------------------------------------------------------


def _recovery(settings: Mapping[str, Any]) -> RecoverySettings:
    return RecoverySettings(checkpoint_every=settings["checkpoint_every"], check_every=settings["check_every"],
                            spike_factor=settings["spike_factor"], drift_threshold=settings["drift_threshold"],
                            alpha_escalation=settings["alpha_escalation"], lr_backoff=settings["lr_backoff"],
                            max_rollbacks=settings["max_rollbacks"])


REVISIT_EVERY = 8
"""A resting capability still trains on every `REVISIT_EVERY`th joint step. Measured on the demo
(1000 joint steps): 8 trains 347 steps with all four capabilities (seed 42; 303 with seed 7)
against 409 with 4, and math, the one that never rests, kept 0.997 and 0.993 of its teacher."""
CONVERGED_LOSS = {"kl": 0.02, "uld": 0.02, "sequence": 0.02, "cosine": 0.05}
"""Per objective: nats per token for `kl`, `uld` (cross-entropy plus the sorted-probability
distance) and `sequence`; cosine distance for `cosine` (the
demo voice student settles near 0.045, cosine 0.955, with centroid accuracy at the teacher's:
below 0.05 it rests instead of costing a step every joint step)."""
WAKE_FACTOR = 2.0
"""A resting capability trains fully again once its running loss passes this times its
`CONVERGED_LOSS` (hysteresis: one hard batch on a revisit step does not wake it)."""


def converged(name: str, objective: str, running: Mapping[str, float], resting: bool = False) -> bool:
    """Whether a capability may rest: its running output loss is below its objective's
    `CONVERGED_LOSS`, or, for one already `resting`, below `WAKE_FACTOR` times that."""
    limit = CONVERGED_LOSS.get(objective, 0.02) * (WAKE_FACTOR if resting else 1.0)
    return name in running and running[name] < limit


def resting_capabilities(objectives: Mapping[str, str], running: Mapping[str, float],
                         rested: Collection[str] = ()) -> set[str]:
    """The capabilities (name to objective) that rest now: the converged ones (`rested`, those
    resting so far, stay until `WAKE_FACTOR`). A resting capability still trains every
    `REVISIT_EVERY`th step (its anchor protecting its subspace there, its running loss kept
    fresh). None when only one is trained or when every one has converged (a step always trains)."""
    resting = {name for name, objective in objectives.items()
               if len(objectives) > 1 and converged(name, objective, running, name in rested)}
    return set() if len(resting) == len(objectives) else resting


def _step_loss_of(context: RunContext, model: NexusStudent, tasks: list[CapabilityTask], size: int) -> Any:
    """The step function of `tasks` on `model`: every capability not resting, its loss summed."""
    anchor_loss_of = plugin_anchor_loss(context)

    def step_loss(step: int, alpha: float, extra: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        running = extra.setdefault("output_loss", {})
        total = torch.zeros(())
        parts: dict[str, float] = {}
        extra["resting"] = sorted(resting_capabilities({task.name: task.pool.objective for task in tasks},
                                                       running, extra.get("resting", ())))
        resting = set(extra["resting"]) if step % REVISIT_EVERY else set()
        for task in tasks:
            if task.name in resting:
                continue
            loss, task_parts = task_loss(model, task, task.batch(step, size), alpha * task.alpha_scale,
                                         anchor_loss_of)
            value = task_parts[f"{task.name}.output"]
            running[task.name] = value if task.name not in running else 0.9 * running[task.name] + 0.1 * value
            total = total + loss
            parts.update(task_parts)
        return total, parts

    return step_loss


def _set_trainable(student: NexusStudent, tasks: list[CapabilityTask], frozen: bool) -> list[tuple[str, nn.Module]]:
    """Freeze all but the adapters of `tasks` (and the backbone unless `frozen`); the trained
    modules by name."""
    student.freeze_backbone(frozen)
    for name, adapter in student.adapters.items():
        adapter.requires_grad_(any(task.name == name for task in tasks))
    modules = [(f"adapters.{task.name}", student.adapters[task.name]) for task in tasks]
    if not frozen:
        modules.append(("backbone", student.backbone))
    return modules


def train_phase(context: RunContext, student: NexusStudent, tasks: list[CapabilityTask], phase: str,
                steps: int, learning_rate: float, frozen: bool, settings: Mapping[str, Any],
                fingerprint: Any, rebuild: Callable[[], NexusStudent] | None = None) -> dict[str, Any]:
    """One phase: the adapters of `tasks` (and the backbone unless `frozen`) trained for
    `steps` on the sum of the tasks' losses; returns the phase's summary.

    Under torchrun the steps run under DistributedDataParallel (`data_parallel`), or with
    `distill.parallel = "fsdp"` on a copy of the student from `rebuild` sharded with FSDP2
    (`fully_sharded`), whose trained weights come back whole into `student` at the end."""
    modules = _set_trainable(student, tasks, frozen)
    journal = Journal(context.run_dir / TRAINING_JOURNAL, phase)
    size = settings["batch_size"]
    step_loss = _step_loss_of(context, student, tasks, size)

    def check_of(model: NexusStudent) -> float:
        return sum(reconstruction(model, task) for task in tasks) / len(tasks)

    torch.set_num_threads(cpu_threads(settings["threads"]))
    student.train()
    first, _ = step_loss(0, settings["alpha"], {})
    unused: list[str] = []
    norms = agreed_gradient_health(student, dict(modules[: len(tasks)]), first, frozen, unused)  # type: ignore[arg-type]
    journal.write("gradient_check", norms=norms, backbone_frozen=frozen)
    trained, trained_step, check = student, step_loss, lambda: check_of(student)
    sharded = None
    if world().active and settings["parallel"] == "fsdp":
        if rebuild is None:
            raise StageError("distill.parallel = 'fsdp' needs a way to build the student again")
        trained = rebuild()
        trained.load_state_dict(student.state_dict())
        modules = _set_trainable(trained, tasks, frozen)
        trained.train()
        sharded = fully_sharded(trained)
        model_step = _step_loss_of(context, trained, tasks, size)

        def trained_step(step: int, alpha: float, extra: dict[str, Any]) -> Any:
            return sharded(lambda: model_step(step, alpha, extra))

        def check() -> float:
            return sharded(lambda: check_of(trained))  # type: ignore[no-any-return]
    elif world().active:
        # Resting capabilities leave their adapters out of some steps.
        some_unused = int(all_sum(torch.tensor([len(unused)]))) > 0  # one answer for all ranks, or DDP hangs
        trained_step = data_parallel(student, step_loss, find_unused=len(tasks) > 1 or some_unused)
    folder = context.run_dir / CHECKPOINT_DIR / phase
    with progress(steps, f"distilling {phase}") as bar:
        trainer = RecoveringTrainer(trained, named_trainable(modules), trained_step, steps, learning_rate, folder,
                                    journal, _recovery(settings), settings["alpha"], check=check,
                                    fingerprint=fingerprint, progress=bar.update,
                                    alpha_scales={task.name: task.alpha_scale for task in tasks})
        state = trainer.run()
    if sharded is not None:
        whole = {name.removeprefix("student."): full_tensor(value) for name, value in sharded.state_dict().items()}
        student.load_state_dict(whole)
    explained = check_of(student)
    journal.write("end", step=state.step, reconstruction=explained, events=state.events)
    return {"steps": state.step, "reconstruction": explained, "alpha": state.alpha,
            "alpha_effective": trainer.effective_alpha(), "lr_scale": state.lr_scale,
            "rollbacks": state.rollbacks, "events": state.events, "skipped_steps": state.skipped}


class _StepModule(nn.Module):
    """The student with one step's whole loss as its forward: DistributedDataParallel then
    sees one forward per backward, however many capabilities (student calls) the step has."""

    def __init__(self, student: NexusStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, compute: Callable[[], Any]) -> Any:
        return compute()


def data_parallel(student: NexusStudent, step_loss: Callable[[int, float, dict[str, Any]], Any],
                  find_unused: bool = True) -> Callable[[int, float, dict[str, Any]], Any]:
    """`step_loss` under DistributedDataParallel (gloo: the student trains on the CPU): rank
    0's weights are broadcast once, and each backward all-reduces the gradients (averaged), so
    every rank takes the same optimiser step. `find_unused`: some steps leave trainable
    parameters out (a resting capability's adapter), which DDP must then look for."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(_StepModule(student), find_unused_parameters=find_unused)

    def step(index: int, alpha: float, extra: dict[str, Any]) -> Any:
        return wrapped(lambda: step_loss(index, alpha, extra))

    return step


def fully_sharded(student: NexusStudent) -> nn.Module:
    """`student` sharded across the ranks with FSDP2: each decoder block its own unit
    (gathered for its forward and backward, then freed), the rest (embeddings, head, adapters)
    the root's, which stays gathered from a step's forward to its backward because the anchor
    projections and the losses use it after the backbone's forward. Returns the root: call it
    with a function of no arguments (a step's loss, a check), which then runs inside its forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from nexus_kernel.teachers.classes import decoder_blocks

    # The student trains on the CPU: a CPU mesh, or FSDP would take a visible GPU for it.
    mesh = init_device_mesh("cpu", (world().size,))
    modules = dict(student.backbone.named_modules())
    for block in decoder_blocks(student.backbone, "student"):
        fully_shard(modules[block], mesh=mesh)
    root = _StepModule(student)
    fully_shard(root, mesh=mesh, reshard_after_forward=False)
    return root


def _phase_done(folder: Path, fingerprint: str) -> bool:
    done = folder / "done.json"
    return done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint


def _prepare_tasks(context: RunContext, student: NexusStudent, architecture: Mapping[str, Any],
                   settings: Mapping[str, Any], seed: int) -> dict[str, CapabilityTask]:
    """Per capability, in name order: its plan (without the teacher) and its pool (read from
    the cache, or built with its teacher: one teacher in memory at a time, and each loaded once
    for all the capabilities it serves)."""
    from nexus_kernel.teachers.access import TeacherSession, by_teacher
    from nexus_kernel.teachers.registry import TeacherEntry

    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"]
    registry = {e["name"]: e for e in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    locked = locked_settings(context.run_dir)
    names = sorted(architecture["capabilities"])
    capabilities = {name: bound_capability(context.plugins, context.run_dir, name) for name in names}
    plans = {}
    for name in names:
        plan = context.plugins.call_for(name, "distill_capability", capability=capabilities[name], teacher=None,
                                        student=student, datasets=datasets[name])
        if plan is None:
            raise StageError(f"{name}: its plugin gives no distillation plan (distill_capability returned None)")
        plans[name] = plan
    entries = {name: TeacherEntry.from_json(registry[architecture["capabilities"][name]["teacher"]]) for name in names}
    pools = {}
    with TeacherSession(context) as session:
        for name in by_teacher(entries):
            pools[name] = build_pool(context, student, name, plans[name], architecture,
                                     {**settings, "pool_size": locked[name].pool_size(settings["pool_size"]),
                                      "text_loss": locked[name].text_loss},
                                     context.run_dir / CHECKPOINT_DIR / name, session)
    return {name: CapabilityTask(name, capabilities[name], plans[name], pools[name],
                                 seed + index, locked[name].alpha_scale)
            for index, name in enumerate(names)}


def _phase(context: RunContext, student: NexusStudent, tasks: list[CapabilityTask], phase: str,
           frozen: bool, settings: Mapping[str, Any], fingerprint: str, weights: nn.Module, seed: int,
           rebuild: Callable[[], NexusStudent] | None = None) -> dict[str, Any]:
    """Run one phase, or reuse its result when `done.json` has this fingerprint; the phase's
    final `weights` (the adapter, or the whole student) are saved next to it."""
    folder = context.run_dir / CHECKPOINT_DIR / phase
    final = folder / "final.safetensors"
    if _phase_done(folder, fingerprint) and final.is_file():
        load_weights(weights, final)
        return json.loads((folder / "done.json").read_text())["summary"]  # type: ignore[no-any-return]
    seed_everything(seed)
    steps, rate = ((settings["adapter_steps"], settings["learning_rate"]) if frozen
                   else (settings["joint_steps"], settings["joint_learning_rate"]))
    summary = train_phase(context, student, tasks, phase, steps, rate, frozen, settings, fingerprint, rebuild)
    if world().main:
        save_weights(weights, final)
        atomic_write_json(folder / "done.json", {"fingerprint": fingerprint, "summary": summary})
    barrier()
    return summary


def _score(context: RunContext, student: NexusStudent, task: CapabilityTask, settings: Mapping[str, Any]
           ) -> dict[str, Any]:
    """The student's held-out scores next to its teacher's, and the retention verdict."""

    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"][task.name]
    scores = context.plugins.call_for(task.name, "retention_metric", capability=task.capability,
                                      model=StudentCapability(student, task.name), split="test",
                                      datasets=datasets, limit=settings["eval_samples"],
                                      reference=read_reference(context.run_dir, task.name))
    student_scores = checked_scores(task.name, task.capability.benchmarks, scores)
    headline = headline_benchmark(task.name, task.capability.benchmarks, task.pool.teacher_scores)
    result = verdict(task.pool.teacher_scores[headline], student_scores[headline])
    log.info("held-out", capability=task.name, benchmark=headline, teacher=task.pool.teacher_scores[headline]["value"],
             student=student_scores[headline]["value"], **result)
    return {"benchmark": headline, "retention": result,
            "output_loss": {"objective": task.pool.objective, "why": task.pool.reason},
            "teacher": {key: _summary(score) for key, score in task.pool.teacher_scores.items()},
            "student": {key: _summary(score) for key, score in student_scores.items()}}


def _summary(score: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in score.items() if key != "per_item"}


def _row_tokens(student: NexusStudent, task: CapabilityTask, size: int) -> int:
    """Positions in a row of the capability's first batch (all of it, on every rank): its text
    tokens and the prefix its projector makes of an image or a recording."""
    batch = task.batch(0, size, whole=True)
    tokens = int(batch.input_ids.shape[1]) if batch.input_ids is not None else 0
    adapter: CapabilityAdapter = student.adapters[task.name]  # type: ignore[assignment]
    if batch.prefix is not None and adapter.projector is not None:
        with torch.no_grad():
            tokens += int(adapter.projector(batch.prefix[:1]).shape[1])
    return max(1, tokens)


def joint_phase_runs(student: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether stage 4 runs the joint phase (`distill.joint`, see its help): `auto` runs it only
    over a backbone built from config, whose random weights the adapters alone cannot fix."""
    from nexus_kernel.student.build import pretrained_backbone

    wanted = settings["joint"] == "on" or (settings["joint"] == "auto" and not pretrained_backbone(dict(student)))
    return wanted and settings["joint_steps"] > 0


def start_anchors_on_the_basis(run_dir: Path, student: NexusStudent, task: CapabilityTask,
                               architecture: Mapping[str, Any]) -> list[int]:
    """When the student's backbone was cut from this capability's teacher, its anchored blocks
    are the teacher's own key layers, so the projection that gives the teacher's whitened
    coefficients is known: `(h - mean) @ components.T / sqrt(eigenvalues)`. Start each
    token-aligned anchor projection there, not at random, and return the anchor indices set.
    A random start is why anchoring wrecked a cut student: on SmolLM2 the first anchor loss was
    862 (x alpha 10) against an output loss of 3.4, and 200 steps of that took the 28-block
    cut from the teacher's 0.790 on held-out knowledge questions to 0.441."""
    cut = architecture["backbone"].get("cut")
    entry = architecture["capabilities"][task.name]
    if cut is None or cut.get("teacher") != entry["teacher"]:
        return []
    key_layers = [pair["teacher"] for pair in entry["layer_map"]]
    basis = read_basis(run_dir, task.name, key_layers, int(entry["rank"]))
    adapter: CapabilityAdapter = student.adapters[task.name]  # type: ignore[assignment]
    started = []
    with torch.no_grad():
        for index, layer in enumerate(key_layers):
            if index not in task.pool.tokens:
                continue  # sequence-mean anchors are whitened over the pool, not by the profile
            mean, components, eigenvalues = (tensor.double() for tensor in basis[layer])
            scale = token_scale(eigenvalues)
            projection = adapter.anchors[str(index)]
            projection.weight.copy_(components / scale[:, None])
            projection.bias.copy_(-(mean @ components.T) / scale)
            started.append(index)
    return started


def run_distill(context: RunContext) -> str:
    """Stage 4 (see the module docstring)."""
    from nexus_kernel.student.build import build_student

    architecture = json.loads((context.run_dir / ARCHITECTURE_FILE).read_text())
    settings = context.config.section("distill")
    seed = int(json.loads((context.run_dir / LOCK_FILE).read_text())["seed"])
    if settings["batch_size"] < world().size:
        raise StageError(f"distill.batch_size = {settings['batch_size']} is the whole batch of a step, shared among "
                         f"{world().size} processes: give it {world().size} or more, so each process has a row")
    student = build_student(context, architecture)
    torch.set_num_threads(cpu_threads(settings["threads"]))  # build_student seeded with one; the teachers answer with all
    tasks = _prepare_tasks(context, student, architecture, settings, seed)
    # Refused before training: the student's step on the CPU with every capability and the
    # backbone trained, rows as long as the longest first batch.
    # Under torchrun each rank's rows (its share of the batch) as long as the whole batch's longest.
    longest = max(_row_tokens(student, task, settings["batch_size"]) for task in tasks.values())
    rows = -(-settings["batch_size"] // world().size)
    memory_plan.check_fits(memory_plan.student_plan(student, rows, tokens=longest, tasks=len(tasks)),
                           process_budget(context.config.section("hardware")["memory_budget_gb"], "cpu"), "student")

    def rebuild() -> NexusStudent:
        return build_student(context, architecture)

    base = {"architecture": architecture, "distill": settings, "seed": seed}
    phases: dict[str, Any] = {}
    adapters = {}
    for name, task in tasks.items():
        started = start_anchors_on_the_basis(context.run_dir, student, task, architecture)
        if started:
            log.info("anchors start on the teacher's basis", capability=name, anchors=started)
        phase = f"adapter-{name}"
        fingerprint = sha256_json({**base, "phase": phase, "pool": task.pool.teacher_scores,
                                   "alpha_scale": task.alpha_scale, "objective": task.pool.objective})
        phases[phase] = _phase(context, student, [task], phase, True, settings, fingerprint,
                               student.adapters[name], seed, rebuild)
        adapters[name] = sha256_file(context.run_dir / CHECKPOINT_DIR / phase / "final.safetensors")
    if joint_phase_runs(context.config.section("student"), settings):
        fingerprint = sha256_json({**base, "phase": "joint", "adapters": adapters,
                                   "alpha_scales": {name: task.alpha_scale for name, task in tasks.items()}})
        phases["joint"] = _phase(context, student, list(tasks.values()), "joint", False, settings, fingerprint,
                                 student, seed, rebuild)
    student.eval()
    if not world().main:
        barrier()  # the leader scores and writes alone
        return ""
    report = {"phases": phases, "events": summarise(context.run_dir / TRAINING_JOURNAL),
              "capabilities": {name: _score(context, student, task, settings) for name, task in tasks.items()}}
    save_weights(student, context.run_dir / STUDENT_FILE)
    atomic_write_json(context.run_dir / DISTILL_REPORT, report)
    barrier()
    lines = []
    for name, entry in report["capabilities"].items():
        verdict, headline = entry["retention"], entry["benchmark"]
        shown = f"{verdict['ratio']:.3f}" if verdict["ratio"] is not None else verdict["status"]
        lines.append(f"{name} {entry['student'][headline]['value']:.3f}/{entry['teacher'][headline]['value']:.3f} ({shown})")
    return "student/teacher: " + ", ".join(lines)
