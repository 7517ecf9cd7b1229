"""The small, deterministic training loop every demo teacher uses.

Plugins bring the model, a batch maker, a loss and (optionally) a validation scorer; the loop
brings what all of them need: AdamW with a warm-up and cosine rounds, gradient clipping, a
finite-loss check, progress, and stopping once the validation score clears its target. Seeding
is the kernel's: a demo build runs in a worker that `nexus_kernel.run.seeding.seed_everything`
seeded with the recipe's seed.

Training runs in rounds so that a build can stop as soon as it is good enough and go on where
it is not (another CPU's floats give another trajectory): the first round warms up and decays
to zero over `first_round` steps; each later round restarts at `restart_factor` times the
previous round's peak and decays over `round_steps` (warm restarts, as in SGDR). Every round
ends with the learning rate near zero, so the model is validated at a settled point, never
mid-step at full learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nexus_kernel.errors import StageError

if TYPE_CHECKING:
    import torch
    from torch import nn

Progress = Callable[[int], None]
"""Called with the number of steps just finished (for a progress bar)."""

Validate = Callable[["nn.Module"], float]
"""Scores the model (in eval mode) on a validation split: the headline figure, higher is better."""


@dataclass(frozen=True)
class TrainingPlan:
    """Optimiser settings and the round schedule; part of a demo teacher's recipe, so
    changing one rebuilds it.

    `steps` is the most the build may train (the cap). `first_round` (0: all of `steps`) is
    the first round's length and `round_steps` each later round's (0: `first_round`'s).
    """

    steps: int
    learning_rate: float
    batch_size: int
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    clip_norm: float = 1.0
    first_round: int = 0
    round_steps: int = 0
    restart_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 1 or self.first_round < 0 or self.round_steps < 0:
            raise ValueError(f"a training plan needs steps >= 1 and no negative round: {self}")

    def rounds(self) -> list[tuple[int, int]]:
        """`(start, end)` steps of each round, the last one cut at the cap."""
        first = min(self.first_round or self.steps, self.steps)
        later = self.round_steps or first
        bounds = [(0, first)]
        while bounds[-1][1] < self.steps:
            start = bounds[-1][1]
            bounds.append((start, min(start + later, self.steps)))
        return bounds

    def learning_rate_factor(self, step: int) -> float:
        """The learning rate at `step` as a fraction of `learning_rate`."""
        for index, (start, end) in enumerate(self.rounds()):
            if step < end:
                length, into = end - start, step - start
                peak = self.restart_factor**index
                warmup = int(self.warmup_fraction * length) if index == 0 else 0
                if into < warmup:  # linear from 1/25 of the peak, as OneCycleLR starts
                    return peak * (0.04 + 0.96 * into / warmup)
                progress = (into - warmup) / max(1, length - warmup)
                return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RoundResult:
    """The validation score after one round (`steps`: steps trained by then)."""

    steps: int
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "score": round(self.score, 6)}


@dataclass(frozen=True)
class TrainingRecord:
    """What `fit` did: steps trained, the loss per step, each round's validation score, and
    whether the target was reached (None: no validation was asked for)."""

    steps: int
    losses: list[float] = field(repr=False)
    rounds: tuple[RoundResult, ...] = ()
    target: float | None = None

    @property
    def reached(self) -> bool | None:
        if self.target is None:
            return None
        return bool(self.rounds) and self.rounds[-1].score >= self.target

    @property
    def validation(self) -> float | None:
        return self.rounds[-1].score if self.rounds else None

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "target": self.target, "reached": self.reached,
                "rounds": [result.to_json() for result in self.rounds]}


def fit(
    model: nn.Module,
    plan: TrainingPlan,
    make_batch: Callable[[int], Any],
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    progress: Progress | None = None,
    report_every: int = 25,
    validate: Validate | None = None,
    target: float | None = None,
) -> TrainingRecord:
    """Train `model` on `make_batch(step)` round by round (see the module docstring). With
    `validate`, the model is scored after each round and training stops at the first round
    whose score reaches `target` (without a target, every round runs); without it, all
    `plan.steps` run. `progress` gets the steps as they are trained. A non-finite loss stops
    training with an error naming the step. The model is left in eval mode."""
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate,
                                  weight_decay=plan.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, plan.learning_rate_factor)
    losses: list[float] = []
    results: list[RoundResult] = []
    step = 0
    for _, end in plan.rounds():
        model.train()
        unreported = 0
        while step < end:
            loss = loss_of(model, make_batch(step))
            if not torch.isfinite(loss):
                raise StageError(f"training loss is {loss.item()} at step {step}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), plan.clip_norm)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            step += 1
            unreported += 1
            if progress is not None and unreported == report_every:
                progress(unreported)
                unreported = 0
        if progress is not None and unreported:
            progress(unreported)
        model.eval()
        if validate is None:
            continue
        results.append(RoundResult(step, float(validate(model))))
        if target is not None and results[-1].score >= target:
            break
    model.eval()
    return TrainingRecord(step, losses, tuple(results), target)
