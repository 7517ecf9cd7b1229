"""The demo teachers' training loop: rounds of warm-up and cosine decay, stopping at the first
round whose validation score reaches the target, repeatable bit for bit."""

from __future__ import annotations

import pytest
import torch

from nexus_kernel.run.seeding import seed_everything
from nexus_modalities.training import TrainingPlan, fit


def _task(seed: int = 0) -> tuple[torch.nn.Module, object, object]:
    """A linear model learning y = x @ w: batches depend on the step only."""
    seed_everything(seed)
    model = torch.nn.Linear(4, 1)
    truth = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def make_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(16, 4, generator=generator)
        return x, x @ truth

    def loss_of(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    return model, make_batch, loss_of


def _accuracy(model: torch.nn.Module) -> float:
    """Higher is better, 1.0 at the truth: a stand-in for a benchmark score."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(99))
    truth = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    assert not model.training, "validation must see the model in eval mode"
    with torch.no_grad():
        return float(1 / (1 + torch.nn.functional.mse_loss(model(x), truth)))


def test_the_schedule_warms_up_once_then_restarts_lower_and_ends_each_round_near_zero() -> None:
    plan = TrainingPlan(steps=250, learning_rate=1e-2, batch_size=1, first_round=100, round_steps=60)
    assert plan.rounds() == [(0, 100), (100, 160), (160, 220), (220, 250)]
    assert plan.learning_rate_factor(0) == pytest.approx(0.04)
    assert plan.learning_rate_factor(10) == pytest.approx(1.0)
    assert plan.learning_rate_factor(99) < 1e-3
    assert plan.learning_rate_factor(100) == pytest.approx(0.5)
    assert plan.learning_rate_factor(160) == pytest.approx(0.25)
    assert TrainingPlan(steps=50, learning_rate=1.0, batch_size=1).rounds() == [(0, 50)]


def test_training_stops_at_the_first_round_that_reaches_the_target() -> None:
    model, make_batch, loss_of = _task()
    plan = TrainingPlan(steps=2000, learning_rate=0.1, batch_size=16, first_round=20, round_steps=20, restart_factor=1.0)
    reported: list[int] = []
    record = fit(model, plan, make_batch, loss_of, reported.append, validate=_accuracy, target=0.99)
    assert record.reached is True
    assert record.rounds[-1].score >= 0.99 and all(r.score < 0.99 for r in record.rounds[:-1])
    assert record.steps == record.rounds[-1].steps < plan.steps
    assert len(record.losses) == record.steps
    assert sum(reported) == record.steps


def test_a_target_out_of_reach_trains_to_the_cap_and_says_so() -> None:
    model, make_batch, loss_of = _task()
    plan = TrainingPlan(steps=90, learning_rate=1e-4, batch_size=16, first_round=30, round_steps=30)
    record = fit(model, plan, make_batch, loss_of, validate=_accuracy, target=0.999)
    assert record.reached is False and record.steps == 90
    assert [r.steps for r in record.rounds] == [30, 60, 90]
    assert record.to_json()["reached"] is False


def test_without_validation_every_step_runs_and_reached_is_unknown() -> None:
    model, make_batch, loss_of = _task()
    record = fit(model, TrainingPlan(steps=30, learning_rate=1e-2, batch_size=16, first_round=10),
                 make_batch, loss_of)
    assert record.steps == 30 and record.rounds == () and record.reached is None


def test_the_same_plan_twice_gives_the_same_weights_bit_for_bit() -> None:
    weights = []
    for _ in range(2):
        model, make_batch, loss_of = _task(seed=5)
        fit(model, TrainingPlan(steps=200, learning_rate=5e-2, batch_size=16, first_round=50),
            make_batch, loss_of, validate=_accuracy, target=0.999)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
