"""The small, deterministic training loop every demo teacher uses.

Plugins bring the model, a batch maker and a loss; the loop brings what all of them need:
seeding, AdamW with a one-cycle schedule, gradient clipping, a finite-loss check and progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nexus_kernel.errors import StageError

if TYPE_CHECKING:
    import torch
    from torch import nn

Progress = Callable[[int], None]
"""Called with the number of steps just finished (for a progress bar)."""


@dataclass(frozen=True)
class TrainingPlan:
    """Optimiser settings; part of a demo teacher's recipe, so changing one rebuilds it."""

    steps: int
    learning_rate: float
    batch_size: int
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    clip_norm: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and pin torch to one thread: on small models one thread is
    the steadiest and keeps results bitwise repeatable."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(1)


def fit(
    model: nn.Module,
    plan: TrainingPlan,
    make_batch: Callable[[int], Any],
    loss_of: Callable[[nn.Module, Any], torch.Tensor],
    progress: Progress | None = None,
    report_every: int = 25,
) -> list[float]:
    """Train `model` for `plan.steps` steps on `make_batch(step)` and return the loss per step.
    A non-finite loss stops training with an error naming the step."""
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate,
                                  weight_decay=plan.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=plan.learning_rate, total_steps=plan.steps,
        pct_start=plan.warmup_fraction,
    )
    model.train()
    losses: list[float] = []
    for step in range(plan.steps):
        loss = loss_of(model, make_batch(step))
        if not torch.isfinite(loss):
            raise StageError(f"training loss is {loss.item()} at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.clip_norm)
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None and (step + 1) % report_every == 0:
            progress(report_every)
    if progress is not None and plan.steps % report_every:
        progress(plan.steps % report_every)
    model.eval()
    return losses
