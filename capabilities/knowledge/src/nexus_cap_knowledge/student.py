"""How a knowledge teacher is distilled and how either model is scored.

The teacher's answer to a training question is the option it finds most likely (as the scorer
asks it), written after the prompt as the completion; the student learns to write it. With a
student built from the teacher's own family the vocabularies agree, so the objective is KL on
the teacher's next-token distribution over the whole text, question and answer
(`text_distill_plan`'s `whole_text`: a student cut from the teacher relearns what the removed
blocks did there, not only the answer's one or two tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_cap_knowledge import benchmark
from nexus_cap_knowledge.data import Question, SyntheticRecipe, load_split
from nexus_kernel import Score
from nexus_kernel.contracts import DistillPlan
from nexus_modalities.multiple_choice import LETTERS, MMLU_SPLITS, best_continuations, cloze_continuations


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_split, MMLU_SPLITS[split])


def _choose(model: Any, questions: list[Question]) -> list[str]:
    """The option (as its continuation, ` Nairobi`) the model finds most likely for each question."""
    return best_continuations(model, [benchmark.prompt_of(q) for q in questions],
                              lambda i: cloze_continuations(questions[i]))


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """Train on the training split (the synthetic stream of training facts, or an MMLU folder's
    `dev` split): the teacher picks each question's option, the student learns to write it."""
    from nexus_modalities.text_distill import text_distill_plan

    return text_distill_plan(teacher, student, lambda: iter(_items(datasets, "train")), benchmark.pair_of,
                             answer_items=_choose, whole_text=True)


def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
          reference: Mapping[str, Any] | None = None) -> dict[str, Score]:
    """Knowledge accuracy of a teacher or student on the first `limit` items of `split`."""
    from nexus_modalities.text_model import text_model_of

    questions = list(_items(datasets, split))[:limit]
    return benchmark.evaluate(text_model_of(model), questions)


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The packaged student's choice for one question: `inputs` are the question and its four
    options, e.g. `"What is the capital of Kenya?" Lagos Nairobi Cairo Accra`."""
    from nexus_kernel.errors import NexusError
    from nexus_modalities.text_model import text_model_of

    if len(inputs) != 1 + len(LETTERS) or not all(text.strip() for text in inputs):
        raise NexusError(f"knowledge: give the question and its {len(LETTERS)} options as separate, non-empty "
                         f"arguments (got {len(inputs)} arguments)")
    question = Question(subject="knowledge", question=inputs[0], choices=tuple(inputs[1:]), answer=LETTERS[0])  # type: ignore[arg-type]
    chosen = _choose(text_model_of(model), [question])[0]
    index = cloze_continuations(question).index(chosen)
    return f"{LETTERS[index]}) {question.choices[index]}"
