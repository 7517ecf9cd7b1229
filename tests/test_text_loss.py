"""Stage 4's choice of a capability's output loss under `[capabilities.<name>] text_loss`
(`distill_pool.chosen_plan`), and what the pool records of it."""

from __future__ import annotations

import pytest

from nexus_kernel.contracts import DistillPlan
from nexus_kernel.errors import StageError
from nexus_kernel.stages.distill_pool import PLAIN_REASONS, chosen_plan


def _plan(objective: str, **fields: object) -> DistillPlan:
    def nothing(*args: object) -> list[object]:
        return []

    return DistillPlan(items=lambda: iter(()), teacher_batch=nothing, teacher_forward=nothing,  # type: ignore[arg-type]
                       teacher_outputs=nothing, student_batch=nothing, objective=objective, **fields)  # type: ignore[arg-type]


def test_auto_keeps_the_plugins_choice() -> None:
    for objective in ("kl", "uld", "sequence", "cosine"):
        plan = _plan(objective)
        assert chosen_plan("cap", plan, "auto") is plan


def test_sequence_drops_the_teachers_distributions_when_the_plan_cannot_retarget() -> None:
    plan = _plan("kl", teacher_distributions=lambda items, outputs: [], reason="kl: shared")
    chosen = chosen_plan("cap", plan, "sequence")
    assert chosen.objective == "sequence" and chosen.teacher_distributions is None
    assert chosen.reason == "sequence: [capabilities.cap] text_loss = 'sequence'"


def test_an_override_goes_through_the_plans_for_objective() -> None:
    uld = _plan("uld", teacher_distributions=lambda items, outputs: [], reason="uld: asked")
    plan = _plan("kl", teacher_distributions=lambda items, outputs: [], for_objective={"uld": uld}.get)
    assert chosen_plan("cap", plan, "uld") is uld


def test_what_cannot_apply_is_a_clear_error() -> None:
    with pytest.raises(StageError, match=r"cap: \[capabilities.cap\] text_loss = 'uld' applies to text outputs; "
                                         r"this capability distils embeddings \(cosine\)"):
        chosen_plan("cap", _plan("cosine"), "uld")
    with pytest.raises(StageError, match=r"cap: \[capabilities.cap\] text_loss = 'uld', but its plugin's plan cannot "
                                         r"give the teacher's distributions for uld \(its objective is sequence\)"):
        chosen_plan("cap", _plan("sequence"), "uld")


def test_every_objective_has_a_reason_for_the_report() -> None:
    from nexus_kernel.stages.distill_pool import OBJECTIVES

    assert set(PLAIN_REASONS) == set(OBJECTIVES)
    assert all(reason.startswith(f"{objective}: ") for objective, reason in PLAIN_REASONS.items())
