"""MMLU scoring as lm-evaluation-harness does it, one scorer for teacher and student.

The prompt is the subject line, `shots` worked examples from `dev`, then the question with its
four options and `Answer:`; the model's choice is the option whose continuation ` A`..` D` has
the highest log-likelihood. Accuracy is the share of questions where that is the gold letter.
"""

from __future__ import annotations

from collections.abc import Sequence

from nexus_cap_reasoning.data import LETTERS, Question
from nexus_kernel import Score

NAME = "MMLU"
CHANCE = 1 / len(LETTERS)
CONTINUATIONS = tuple(f" {letter}" for letter in LETTERS)


def _block(question: Question) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices))
    return f"{question.question.strip()}{options}\nAnswer:"


def prompt_of(question: Question, examples: Sequence[Question] = ()) -> str:
    """The k-shot prompt for `question`; `examples` are the dev questions of its subject."""
    subject = question.subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    shots = "".join(f"{_block(example)} {example.answer}\n\n" for example in examples)
    return header + shots + _block(question)


def few_shot_pool(dev: Sequence[Question]) -> dict[str, list[Question]]:
    """Dev questions grouped by subject, in file order (the harness takes the first k)."""
    pool: dict[str, list[Question]] = {}
    for question in dev:
        pool.setdefault(question.subject, []).append(question)
    return pool


def requests_for(questions: Sequence[Question], dev: Sequence[Question], shots: int
                 ) -> list[tuple[str, str]]:
    """Four `(prompt, " X")` log-likelihood requests per question, in question order."""
    pool = few_shot_pool(dev)
    requests = []
    for question in questions:
        prompt = prompt_of(question, pool.get(question.subject, [])[:shots])
        requests += [(prompt, continuation) for continuation in CONTINUATIONS]
    return requests


def chance_of(questions: Sequence[Question]) -> float:
    """What a guesser scores: one in four, or always answering the most common gold letter
    when that does better (a set whose options come in a natural order is skewed)."""
    counts = [sum(q.answer == letter for q in questions) for letter in LETTERS]
    return max(CHANCE, max(counts) / len(questions)) if questions else CHANCE


def score(questions: Sequence[Question], loglikelihoods: Sequence[float]) -> dict[str, Score]:
    """Accuracy from four log-likelihoods per question (the order of `requests_for`)."""
    if len(loglikelihoods) != len(LETTERS) * len(questions):
        raise ValueError(f"{len(questions)} questions need {len(LETTERS) * len(questions)} "
                         f"log-likelihoods, got {len(loglikelihoods)}")
    correct = []
    for index, question in enumerate(questions):
        options = loglikelihoods[len(LETTERS) * index : len(LETTERS) * (index + 1)]
        chosen = LETTERS[max(range(len(LETTERS)), key=options.__getitem__)]
        correct.append(float(chosen == question.answer))
    return {NAME: Score.from_items(NAME, correct, chance_of(questions))}


def evaluate(model: object, questions: Sequence[Question], dev: Sequence[Question] = (),
             shots: int = 0) -> dict[str, Score]:
    """Score a text model (anything with `loglikelihoods(requests)`) on `questions`."""
    requests = requests_for(questions, dev, shots)
    return score(questions, model.loglikelihoods(requests))  # type: ignore[attr-defined]
