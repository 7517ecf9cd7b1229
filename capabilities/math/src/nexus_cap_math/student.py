"""How the math teacher is distilled and how either model is scored.

Sequence-level distillation: the teacher writes its worked answer to each training question
and the student learns to write the same text with its own tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_cap_math import benchmark
from nexus_cap_math.data import Problem, SyntheticRecipe, load_split
from nexus_kernel import Score
from nexus_kernel.contracts import DistillPlan


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_split)


def _prompt(problem: Problem) -> tuple[str, str]:
    return benchmark.prompt_of(problem), " " + problem.answer


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """Train on the training split (synthetic stream or `train*.jsonl`); the teacher answers by
    greedy generation."""
    from nexus_modalities.text_distill import text_distill_plan

    return text_distill_plan(teacher, student, lambda: iter(_items(datasets, "train")), _prompt,
                             lambda model, prompts: model.generate(prompts, benchmark.MAX_ANSWER_TOKENS))


def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
          reference: Mapping[str, Any] | None = None) -> dict[str, Score]:
    """GSM8K strict and flexible exact match of a teacher or student on `split`."""
    from nexus_modalities.text_model import text_model_of

    problems = list(_items(datasets, split))[:limit]
    return benchmark.evaluate(text_model_of(model), problems)


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The packaged student's worked answer to one word problem (`inputs` joined as the question)."""
    from nexus_kernel.errors import NexusError
    from nexus_modalities.text_model import text_model_of

    question = " ".join(inputs).strip()
    if not question:
        raise NexusError("math: give the word problem as text, e.g. nexus infer BUNDLE --capability math \"Ann has 3 ...\"")
    prompt = benchmark.prompt_of(Problem(question=question, answer=""))
    return text_model_of(model).generate([prompt], benchmark.MAX_ANSWER_TOKENS)[0].strip()
