"""The demo math teacher: a small LLaMA-style decoder trained on synthetic GSM8K-style word problems."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nexus_cap_math import benchmark
from nexus_cap_math.data import TEMPLATE_WORDS, SyntheticRecipe, load_split
from nexus_kernel.contracts import DemoBuildResult, DemoTeacher, ProbePlan
from nexus_modalities.text_teacher import SMALL_DECODER
from nexus_modalities.training import TrainingPlan

NAME = "nexus-demo-math"
MODEL = {**SMALL_DECODER, "max_position_embeddings": 128}
PLAN = TrainingPlan(steps=3900, learning_rate=1e-3, batch_size=32, first_round=1400, round_steps=500)


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "math", build, benchmark.STRICT, PLAN, seconds_per_step=0.084,
                          data=SyntheticRecipe(), model=MODEL)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> DemoBuildResult:
    """Train the teacher `recipe` describes until it clears its validation target, save it to
    `folder`, return its held-out scores and training record."""
    from nexus_modalities.text_teacher import train_causal_teacher

    data = SyntheticRecipe(**recipe["data"])
    validation = data.validation()
    model, training = train_causal_teacher(
        folder, recipe, progress, TEMPLATE_WORDS, map(_pair, data.train()),
        validate=lambda model: benchmark.evaluate(model, validation)[benchmark.STRICT].value)
    return DemoBuildResult(benchmark.evaluate(model, data.test()), training.to_json())


def _pair(p: Any) -> tuple[str, str]:
    """The `(prompt, completion)` the teacher learns: the completion as it should write it."""
    return benchmark.prompt_of(p), " " + p.answer


def probe_plan(teacher: Any, n_probe: int, datasets: Mapping[str, str]) -> ProbePlan:
    """Probe and profile the teacher on its training split (the synthetic stream, or a GSM8K
    folder's `train*.jsonl`)."""
    from nexus_modalities.text_teacher import text_probe_plan

    return text_probe_plan(teacher, n_probe, datasets["train"], "train", lambda: SyntheticRecipe().train(),
                           load_split, _pair)
