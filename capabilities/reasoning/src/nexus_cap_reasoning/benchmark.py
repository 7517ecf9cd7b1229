"""MMLU scoring as lm-evaluation-harness does it, one scorer for teacher and student.

The prompt is the subject line, `shots` worked examples from `dev`, then the question with its
four options and `Answer:`; the model's choice is the option whose continuation ` A`..` D` has
the highest log-likelihood. Accuracy is the share of questions where that is the gold letter.
The prompts and the scorer are `nexus_modalities.multiple_choice`'s letter style.
"""

from __future__ import annotations

from collections.abc import Sequence

from nexus_cap_reasoning.data import Question
from nexus_kernel import Score
from nexus_modalities.multiple_choice import (
    CHANCE,
    CONTINUATIONS,
    accuracy,
    chance_of,
    few_shot_pool,
    letter_prompt,
    letter_requests,
)

NAME = "MMLU"
__all__ = ["CHANCE", "CONTINUATIONS", "NAME", "chance_of", "evaluate", "few_shot_pool", "prompt_of",
           "requests_for", "score"]

prompt_of = letter_prompt
"""The k-shot prompt for a question; the examples are the dev questions of its subject."""

requests_for = letter_requests
"""Four `(prompt, " X")` log-likelihood requests per question, in question order."""


def score(questions: Sequence[Question], loglikelihoods: Sequence[float]) -> dict[str, Score]:
    """Accuracy from four log-likelihoods per question (the order of `requests_for`)."""
    return {NAME: accuracy(NAME, questions, loglikelihoods)}


def evaluate(model: object, questions: Sequence[Question], dev: Sequence[Question] = (),
             shots: int = 0) -> dict[str, Score]:
    """Score a text model (anything with `loglikelihoods(requests)`) on `questions`."""
    requests = requests_for(questions, dev, shots)
    return score(questions, model.loglikelihoods(requests))  # type: ignore[attr-defined]
