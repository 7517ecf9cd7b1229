"""Visual question answering scored by exact match of the short answer (case and surrounding
spaces ignored, as VQA normalisation does), one scorer for teacher and student."""

from __future__ import annotations

from collections.abc import Sequence

from nexus_cap_vision.data import VisualQuestion
from nexus_kernel import Score

NAME = "vision QA"
CENTROID = "vision centroid accuracy"
"""An image encoder's headline: leave-one-out nearest-centroid accuracy of its embeddings."""
COSINE = "vision cosine"
"""An image encoder's second figure: the student's cosine similarity to the teacher's embedding."""
PROMPT = "Q: {question}\nA:"
MAX_ANSWER_TOKENS = 8


def prompt_of(question: VisualQuestion) -> str:
    return PROMPT.format(question=question.question)


def normalise(answer: str) -> str:
    return " ".join(answer.strip().lower().rstrip(".").split())


def chance_of(questions: Sequence[VisualQuestion]) -> float:
    """Accuracy of always giving the most common answer: what a model scores without looking."""
    counts: dict[str, int] = {}
    for question in questions:
        counts[normalise(question.answer)] = counts.get(normalise(question.answer), 0) + 1
    return max(counts.values()) / len(questions) if questions else 0.0


def score(questions: Sequence[VisualQuestion], answers: Sequence[str]) -> dict[str, Score]:
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    correct = [float(normalise(a) == normalise(q.answer)) for q, a in zip(questions, answers)]
    return {NAME: Score.from_items(NAME, correct, chance_of(questions))}


def evaluate(model: object, questions: Sequence[VisualQuestion]) -> dict[str, Score]:
    """Score an image-text model (anything with `answer(images, prompts, max_new_tokens)`)."""
    answers = model.answer([q.image for q in questions], [prompt_of(q) for q in questions],  # type: ignore[attr-defined]
                           MAX_ANSWER_TOKENS)
    return score(questions, answers)
