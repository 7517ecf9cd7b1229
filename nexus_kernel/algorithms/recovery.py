"""A resumable training loop that recovers from loss spikes and drift.

Every `checkpoint_every` healthy steps the trainable weights, the optimiser, the schedule and
the loop's own state are written atomically (safetensors + JSON, then one rename). A loss
that is not finite or exceeds `spike_factor` times its running mean, or a reconstruction
check that falls more than `drift_threshold` below its best, rolls back to the last
checkpoint, skips the offending batch, multiplies the anchor weight `alpha` by
`alpha_escalation` and the learning rate by `lr_backoff`. Every event is one line of
`training.jsonl`. Batches depend only on the step number, so an interrupted run resumed from
its last checkpoint ends with the same weights as one that never stopped (CPU, same seed).

Under torchrun every rank runs the loop in step: the loss each rank returns is its share (the
mean over ranks is the step's loss), so spikes and rollbacks are judged on that mean and every
rank decides alike; rank 0 alone writes checkpoints and the journal, and the others wait at a
barrier after each checkpoint, then read the same files on resume and rollback. Sharded
(FSDP2) parameters and their optimiser state are written whole and read back into each
rank's shard, so a checkpoint does not depend on how many ranks wrote it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.errors import StageError
from nexus_kernel.run.distributed import all_sum, barrier, world
from nexus_kernel.run.fsio import atomic_write_json, sha256_json

CHECKPOINT_PREFIX = "step-"
LATEST = "latest.json"


@dataclass(frozen=True)
class RecoverySettings:
    """When to check, checkpoint and roll back (config `[distill]`)."""

    checkpoint_every: int = 100
    check_every: int = 50
    spike_factor: float = 3.0
    spike_warmup: int = 10
    drift_threshold: float = 0.3
    alpha_escalation: float = 2.0
    lr_backoff: float = 0.5
    max_rollbacks: int = 8


@dataclass
class LoopState:
    """What the loop carries from step to step, saved with every checkpoint."""

    alpha: float
    """The anchor weight now: `distill.alpha` at the start (no default here, so the config's is
    the only one), raised at each rollback; each capability's loss scales it by its
    `alpha_scale`."""
    step: int = 0
    lr_scale: float = 1.0
    running_loss: dict[str, float] = field(default_factory=dict)
    """Running mean of the loss per composition (the names of the parts a step reported), so a
    step that adds a part is compared with steps like it."""
    steps_since_rollback: dict[str, int] = field(default_factory=dict)
    best_reconstruction: float | None = None
    rollbacks: int = 0
    skipped: list[int] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """The step function's own JSON-able state (saved, restored and rolled back with the rest)."""


StepLoss = Callable[[int, float, dict[str, Any]], "tuple[torch.Tensor, dict[str, float]]"]
"""`(step, alpha, extra) -> (total loss, named parts)` for the batch of that step; `extra` is
`LoopState.extra`, which the function may update."""
Check = Callable[[], float]
"""Reconstruction check: the share of the teacher's subspace variance the student explains."""


class Journal:
    """`training.jsonl`: one JSON object per line (steps, checks, events), appended."""

    def __init__(self, path: Path, phase: str) -> None:
        self.path = path
        self.phase = phase
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        """Append one event (rank 0 only); a non-finite number (a NaN loss) is written as its
        string, so every line stays strict JSON."""
        if not world().main:
            return
        entry = {key: str(value) if isinstance(value, float) and not math.isfinite(value) else value
                 for key, value in {"phase": self.phase, "kind": kind, **fields}.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True, allow_nan=False) + "\n")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` whole: a DTensor (a parameter or its state under FSDP2) is gathered from every
    rank (a collective: every rank must call it, in the same order); any other is itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def placed_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor `full` laid out as `like` is: this rank's shard where `like` is a
    DTensor, else `full` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor) and full.shape == like.shape:
        return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements)
    return full


def _optimiser_tensors(optimiser: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW's state as flat whole tensors (for safetensors) plus the JSON-able rest."""
    state = optimiser.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimiser.{index}.{key}"] = full_tensor(value.detach()).clone().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimiser(optimiser: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                       described: Mapping[str, Any]) -> None:
    parameters = [parameter for group in optimiser.param_groups for parameter in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimiser."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = placed_like(value.clone(), parameters[int(index)])
    for name, value in described["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimiser.load_state_dict({"state": state, "param_groups": described["param_groups"]})


class RecoveringTrainer:
    """Trains `parameters` (named, all belonging to `module`) for `steps` steps of `step_loss`,
    with checkpoints in `folder` and events in `journal`.

    `alpha_scales` (part name to scale, e.g. each capability's `alpha_scale`) only describes
    how `step_loss` scales the alpha it is given: step and rollback lines then also show each
    effective alpha (`alpha_effective`), since the loop's own `alpha` is the unscaled one.
    """

    def __init__(self, module: nn.Module, parameters: Mapping[str, nn.Parameter], step_loss: StepLoss,
                 steps: int, learning_rate: float, folder: Path, journal: Journal,
                 settings: RecoverySettings, alpha: float, check: Check | None = None,
                 fingerprint: Any = None, clip_norm: float = 1.0, warmup_fraction: float = 0.1,
                 on_step: Callable[[int, RecoveringTrainer], None] | None = None,
                 progress: Callable[[int], None] | None = None,
                 alpha_scales: Mapping[str, float] | None = None) -> None:
        self.module = module
        self.parameters = dict(parameters)
        self.step_loss = step_loss
        self.steps = steps
        self.learning_rate = learning_rate
        self.folder = folder
        self.journal = journal
        self.settings = settings
        self.check = check
        self.clip_norm = clip_norm
        self.on_step = on_step
        self.progress = progress
        self.alpha_scales = dict(alpha_scales or {})
        self.fingerprint = sha256_json(fingerprint)
        self.state = LoopState(alpha=alpha)
        self.optimiser = torch.optim.AdamW(list(self.parameters.values()), lr=learning_rate, weight_decay=0.0)
        self.warmup = max(1, int(steps * warmup_fraction))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to a tenth; times the back-off after rollbacks."""
        warmup = self.warmup
        if step < warmup:
            base = (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / max(1, self.steps - warmup))
            base = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return base * self.state.lr_scale

    # checkpoints -------------------------------------------------------------------------

    def _checkpoints(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir()
                      if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX))

    def save_checkpoint(self) -> Path:
        """Write the current state as `step-NNNNNN/` (temp folder, then rename) and point
        `latest.json` at it; older checkpoints beyond the last two are removed. Under torchrun
        rank 0 writes and every rank waits until it has."""
        name = f"{CHECKPOINT_PREFIX}{self.state.step:06d}"
        final = self.folder / name
        # Whole tensors on every rank first: gathering a sharded (FSDP2) one is a collective.
        weights = {key: full_tensor(value.detach()).clone().contiguous() for key, value in self.parameters.items()}
        optimiser_tensors, optimiser_rest = _optimiser_tensors(self.optimiser)
        if world().main:
            self._write_checkpoint(name, final, weights, optimiser_tensors, optimiser_rest)
        barrier()
        return final

    def _write_checkpoint(self, name: str, final: Path, weights: dict[str, torch.Tensor],
                          optimiser_tensors: dict[str, torch.Tensor], optimiser_rest: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file({**{f"weights.{k}": v for k, v in weights.items()}, **optimiser_tensors},
                  str(partial / "state.safetensors"))
        atomic_write_json(partial / "loop.json", {
            "fingerprint": self.fingerprint, "loop": asdict(self.state), "optimiser": optimiser_rest,
            "schedule": self.schedule.state_dict(),
        })
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        atomic_write_json(self.folder / LATEST, {"checkpoint": name, "step": self.state.step})
        for old in self._checkpoints()[:-2]:
            shutil.rmtree(old)

    def _load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(folder / "state.safetensors"))
        described = json.loads((folder / "loop.json").read_text())
        with torch.no_grad():
            for key, parameter in self.parameters.items():
                parameter.copy_(placed_like(tensors[f"weights.{key}"], parameter))
        _restore_optimiser(self.optimiser, tensors, described["optimiser"])
        self.schedule.load_state_dict(described["schedule"])
        self.state = LoopState(**described["loop"])

    def resume(self) -> bool:
        """Load the latest checkpoint written for this same fingerprint; False when none."""
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return False
        folder = self.folder / json.loads(pointer.read_text())["checkpoint"]
        if not (folder / "loop.json").is_file():
            return False
        if json.loads((folder / "loop.json").read_text())["fingerprint"] != self.fingerprint:
            return False
        self._load(folder)
        self.journal.write("resume", step=self.state.step)
        return True

    # the loop --------------------------------------------------------------------------------

    def effective_alpha(self) -> dict[str, float]:
        """Per name of `alpha_scales`, the anchor weight its loss uses now (alpha x scale)."""
        return {name: self.state.alpha * scale for name, scale in sorted(self.alpha_scales.items())}

    def _alpha_fields(self) -> dict[str, Any]:
        return {"alpha": self.state.alpha, **({"alpha_effective": self.effective_alpha()} if self.alpha_scales else {})}

    def _count(self, event: str) -> None:
        self.state.events[event] = self.state.events.get(event, 0) + 1

    def _rollback(self, reason: str, step: int, value: float, skip: bool = True) -> None:
        """Back to the last checkpoint, with alpha raised and the learning rate lowered; the
        batch of `step` is skipped from now on when it caused the trouble (`skip`)."""
        if self.state.rollbacks >= self.settings.max_rollbacks:
            raise StageError(f"{self.journal.phase}: {self.state.rollbacks} rollbacks and still {reason} "
                             f"at step {step} ({value}); see {self.journal.path}")
        carried = self.state
        self._load(self.folder / json.loads((self.folder / LATEST).read_text())["checkpoint"])
        self.state.rollbacks = carried.rollbacks + 1
        self.state.events = dict(carried.events)
        self.state.skipped = sorted({*carried.skipped, step} if skip else set(carried.skipped))
        self.state.alpha = carried.alpha * self.settings.alpha_escalation
        self.state.lr_scale = carried.lr_scale * self.settings.lr_backoff
        self.state.steps_since_rollback = {}
        for group, base in zip(self.optimiser.param_groups, self.schedule.base_lrs, strict=True):
            group["lr"] = base * self._lr_factor(self.schedule.last_epoch)
        self._count(reason)
        self._count("rollback")
        self.journal.write("rollback", reason=reason, at_step=step, value=value, to_step=self.state.step,
                           **self._alpha_fields(), lr_scale=self.state.lr_scale, rollbacks=self.state.rollbacks)

    def _is_spike(self, loss: float, composition: str) -> bool:
        if not math.isfinite(loss):
            return True
        mean = self.state.running_loss.get(composition)
        return (mean is not None and self.state.steps_since_rollback.get(composition, 0) >= self.settings.spike_warmup
                and loss > self.settings.spike_factor * mean)

    def run(self) -> LoopState:
        """Train to `steps` (resuming when a checkpoint of this fingerprint exists)."""
        barrier()  # every rank reads the checkpoints as they are before rank 0 writes one
        if not self.resume():
            self.journal.write("start", steps=self.steps, fingerprint=self.fingerprint)
            self.save_checkpoint()
        self.module.train()
        reported = self.state.step
        while self.state.step < self.steps:
            step = self.state.step
            if self.on_step is not None:
                self.on_step(step, self)
            if step in self.state.skipped:
                self.state.step += 1
                self.schedule.step()
                continue
            started = time.perf_counter()
            loss, parts = self.step_loss(step, self.state.alpha, self.state.extra)
            value = float(all_sum(loss.detach().double().clone())) / world().size
            composition = ",".join(sorted(parts))
            if self._is_spike(value, composition):
                self._rollback("nan" if not math.isfinite(value) else "spike", step, value)
                continue
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(list(self.parameters.values()), self.clip_norm)))
            if not math.isfinite(norm):
                self._rollback("nan", step, norm)
                continue
            self.optimiser.step()
            self.schedule.step()
            mean = self.state.running_loss.get(composition)
            self.state.running_loss[composition] = value if mean is None else 0.9 * mean + 0.1 * value
            self.state.steps_since_rollback[composition] = self.state.steps_since_rollback.get(composition, 0) + 1
            self.state.step += 1
            self.journal.write("step", step=step, loss=value, **self._alpha_fields(),
                               lr=self.optimiser.param_groups[0]["lr"], grad_norm=norm,
                               seconds=round(time.perf_counter() - started, 4),
                               **{key: round(v, 6) for key, v in parts.items()})
            if self.check is not None and self.state.step % self.settings.check_every == 0:
                if self._drifted(self.state.step):
                    continue
            if self.state.step % self.settings.checkpoint_every == 0:
                self.save_checkpoint()
            if self.progress is not None:
                self.progress(self.state.step - reported)
                reported = self.state.step
        self.module.eval()
        return self.state

    def _drifted(self, step: int) -> bool:
        assert self.check is not None
        with torch.no_grad():
            self.module.eval()
            explained = float(self.check())
            self.module.train()
        if not math.isfinite(explained):
            self._rollback("nan", step, explained, skip=False)
            return True
        best = self.state.best_reconstruction
        self.journal.write("check", step=step, reconstruction=explained, best=best)
        # Drift means losing a reconstruction the student had (best above the threshold).
        if best is not None and best > self.settings.drift_threshold and explained < best - self.settings.drift_threshold:
            self._rollback("drift", step, explained, skip=False)
            return True
        self.state.best_reconstruction = explained if best is None else max(best, explained)
        return False


def summarise(journal: Path) -> dict[str, dict[str, int]]:
    """Per phase, how many of each event `training.jsonl` holds since the phase last started
    afresh (a resumed phase keeps its earlier events; a restarted one does not)."""
    counts: dict[str, dict[str, int]] = {}
    if not journal.is_file():
        return counts
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "start":
            counts[entry["phase"]] = {}
        elif entry["kind"] in ("rollback", "resume"):
            phase = counts.setdefault(entry["phase"], {})
            key = entry.get("reason", entry["kind"])
            phase[key] = phase.get(key, 0) + 1
    return counts


def named_trainable(modules: Iterable[tuple[str, nn.Module]]) -> dict[str, nn.Parameter]:
    """`prefix.name -> parameter` for every parameter that requires a gradient."""
    return {f"{prefix}.{name}": parameter for prefix, module in modules
            for name, parameter in module.named_parameters() if parameter.requires_grad}
