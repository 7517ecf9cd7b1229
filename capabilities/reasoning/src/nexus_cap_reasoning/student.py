"""How the reasoning teacher is distilled and how either model is scored.

The teacher's answer to a training question is the option letter it finds most likely (as the
MMLU scorer asks it); the student learns to write that letter (`kl` on the teacher's
distribution over it where every teacher token is a student token, cross-entropy or, asked,
`uld` where the tokenizers differ: `nexus_modalities.text_distill`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_cap_reasoning import benchmark
from nexus_cap_reasoning.data import LETTERS, Question, SyntheticRecipe, load_split
from nexus_kernel import Score
from nexus_kernel.contracts import DistillPlan
from nexus_modalities.multiple_choice import MMLU_SPLITS, best_continuations


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_split, MMLU_SPLITS[split])


def _pair(question: Question) -> tuple[str, str]:
    return benchmark.prompt_of(question), f" {question.answer}"


def _choose(model: Any, prompts: list[str]) -> list[str]:
    """The continuation ` A`..` D` the model finds most likely after each prompt."""
    return best_continuations(model, prompts, lambda _: benchmark.CONTINUATIONS)


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    from nexus_modalities.text_distill import text_distill_plan

    return text_distill_plan(teacher, student, lambda: iter(_items(datasets, "train")), _pair, _choose)


def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
          reference: Mapping[str, Any] | None = None) -> dict[str, Score]:
    """MMLU accuracy of a teacher or student on `split` (zero-shot, as the teacher learned)."""
    from nexus_modalities.text_model import text_model_of

    questions = list(_items(datasets, split))[:limit]
    return benchmark.evaluate(text_model_of(model), questions)


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The packaged student's choice for one multiple-choice question: `inputs` are the
    question and its four options, e.g. `"In which range is 47?" "10 to 29" "30 to 49" ...`."""
    from nexus_kernel.errors import NexusError
    from nexus_modalities.text_model import text_model_of

    if len(inputs) != 1 + len(LETTERS):
        raise NexusError(f"reasoning: give the question and its {len(LETTERS)} options as separate arguments "
                         f"(got {len(inputs)} arguments)")
    question = Question(subject="reasoning", question=inputs[0], choices=tuple(inputs[1:]), answer=LETTERS[0])  # type: ignore[arg-type]
    letter = _choose(text_model_of(model), [benchmark.prompt_of(question)])[0].strip()
    return f"{letter}) {question.choices[LETTERS.index(letter)]}"
