"""The demo reasoning teacher: a small LLaMA-style decoder trained on synthetic MMLU-format questions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nexus_kernel import Score
from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.text import SMALL_DECODER
from nexus_kernel.training import TrainingPlan

from nexus_cap_reasoning import benchmark
from nexus_cap_reasoning.data import TEMPLATE_WORDS, SyntheticRecipe

NAME = "nexus-demo-reasoning"
MODEL = {**SMALL_DECODER, "max_position_embeddings": 256}
PLAN = TrainingPlan(steps=1500, learning_rate=3e-3, batch_size=48)


def demo() -> DemoTeacher:
    return DemoTeacher.of(NAME, "reasoning", build, benchmark.NAME, PLAN,
                          data=SyntheticRecipe(), model=MODEL)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> dict[str, Score]:
    """Train the teacher `recipe` describes, save it to `folder`, return its held-out scores."""
    from nexus_kernel.text import train_causal_teacher

    data = SyntheticRecipe(**recipe["data"])
    pairs = ((benchmark.prompt_of(q), f" {q.answer}") for q in data.train())
    model = train_causal_teacher(folder, recipe, progress, TEMPLATE_WORDS, pairs)
    return benchmark.evaluate(model, data.test())
