"""The demo reasoning teacher: a small LLaMA-style decoder trained on synthetic MMLU-format questions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nexus_cap_reasoning import benchmark
from nexus_cap_reasoning.data import TEMPLATE_WORDS, SyntheticRecipe, load_split
from nexus_kernel.contracts import DemoBuildResult, DemoTeacher, ProbePlan
from nexus_modalities.text_teacher import SMALL_DECODER
from nexus_modalities.training import TrainingPlan

NAME = "nexus-demo-reasoning"
MODEL = {**SMALL_DECODER, "max_position_embeddings": 256}
PLAN = TrainingPlan(steps=2100, learning_rate=1.5e-3, batch_size=48, first_round=600, round_steps=300)


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "reasoning", build, benchmark.NAME, PLAN, seconds_per_step=0.174,
                          data=SyntheticRecipe(), model=MODEL)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> DemoBuildResult:
    """Train the teacher `recipe` describes until it clears its validation target, save it to
    `folder`, return its held-out scores and training record."""
    from nexus_modalities.text_teacher import train_causal_teacher

    data = SyntheticRecipe(**recipe["data"])
    validation = data.validation()
    model, training = train_causal_teacher(
        folder, recipe, progress, TEMPLATE_WORDS, map(_pair, data.train()),
        validate=lambda model: benchmark.evaluate(model, validation)[benchmark.NAME].value)
    return DemoBuildResult(benchmark.evaluate(model, data.test()), training.to_json())


def _pair(q: Any) -> tuple[str, str]:
    """The `(prompt, completion)` the teacher learns: the completion as it should write it."""
    return benchmark.prompt_of(q), f" {q.answer}"


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on the synthetic training stream, or the `dev` split of a real MMLU folder (MMLU has no training split)."""
    from nexus_modalities.text_teacher import text_probe_plan

    return text_probe_plan(teacher, n_probe, datasets["train"], "dev", lambda: SyntheticRecipe().train(),
                           load_split, _pair)
