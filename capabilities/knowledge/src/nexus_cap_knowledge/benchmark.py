"""The knowledge scorer, one for teacher and student: four-way multiple choice scored by the
log-likelihood of each option's own text after `Question: ...\\nAnswer:` (the cloze style of
`nexus_modalities.multiple_choice`, lm-evaluation-harness's `acc`: the sum over the option's
tokens, not normalised by length). Accuracy is the share of questions whose most likely
option is the gold one; chance is 0.25, or the most common gold letter's share if higher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nexus_kernel import Score
from nexus_modalities.multiple_choice import Question, accuracy, cloze_continuations, cloze_prompt, cloze_requests

NAME = "Knowledge"


def prompt_of(question: Question) -> str:
    """The zero-shot prompt; the options are scored as what follows it."""
    return cloze_prompt(question.question)


def pair_of(question: Question) -> tuple[str, str]:
    """The prompt and the gold completion: a distillation item, whose completion the teacher's
    choice replaces."""
    return prompt_of(question), cloze_continuations(question)[question.gold]


def choice_of(question: Question) -> tuple[str, list[str], int]:
    """The prompt, the four continuations the scorer compares, and the gold one's index (what
    the probe plan profiles a teacher on)."""
    return prompt_of(question), cloze_continuations(question), question.gold


def evaluate(model: object, questions: Sequence[Question]) -> dict[str, Score]:
    """Score a text model (anything with `loglikelihoods(requests)`) on `questions`."""
    likelihoods = model.loglikelihoods(cloze_requests(questions))  # type: ignore[attr-defined]
    return {NAME: accuracy(NAME, questions, likelihoods)}


def interval(score: Score, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson interval of an accuracy (narrow enough to judge a teacher against
    chance: about +-0.05 on the 238 held-out questions)."""
    value, n = score.value, score.n
    centre = value + z * z / (2 * n)
    spread = z * math.sqrt(value * (1 - value) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)
