"""Four-way multiple choice in the MMLU format, scored by log-likelihood, for any text capability.

Data: CSV files without a header, six columns (question, A, B, C, D, answer letter), one file
per subject named `<subject>_<split>.csv` under `dev/`, `val/` or `test/` (the real MMLU `data/`
folder reads as it is). Scoring follows lm-evaluation-harness: each question becomes one
`(prompt, continuation)` log-likelihood request per option and the model's choice is the
option with the highest log-likelihood. Two request styles:

- `letter_requests`: the k-shot MMLU prompt listing the options, continuations ` A`..` D`
  (the harness's `mmlu` task).
- `cloze_requests`: `Question: ...\\nAnswer:` and each option's own text as the continuation
  (the harness's `mmlu_continuation`), which small models answer far better than letters.

Accuracy counts the questions whose chosen option is the gold one; chance is one in four, or
the share of the most common gold letter when always answering it does better.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_kernel import Score
from nexus_kernel.kit.datasets import DatasetError, files_for_split
from nexus_kernel.run.fsio import atomic_write_text

LETTERS = ("A", "B", "C", "D")
CHANCE = 1 / len(LETTERS)
CONTINUATIONS = tuple(f" {letter}" for letter in LETTERS)
MMLU_SPLITS = {"train": "dev", "test": "test"}
"""The MMLU folder split each pipeline split reads (MMLU has no training split: train on dev)."""

Request = tuple[str, str]


@dataclass(frozen=True)
class Question:
    """One MMLU row and the subject its file is about."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str

    def row(self) -> list[str]:
        return [self.question, *self.choices, self.answer]

    @property
    def gold(self) -> int:
        """The index of the right option."""
        return LETTERS.index(self.answer)


def read_csv(path: Path, subject: str) -> list[Question]:
    """Every row of one MMLU CSV file; a row without six fields or with an answer other than
    A-D is an error naming the file and row."""
    questions = []
    text = path.read_text(encoding="utf-8")
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row:
            continue
        if len(row) != 6:
            raise DatasetError(f"{path}: row {number}: expected 6 fields "
                               f"(question, A, B, C, D, answer), found {len(row)}")
        answer = row[5].strip()
        if answer not in LETTERS:
            raise DatasetError(f"{path}: row {number}: answer {row[5]!r} is not one of A, B, C, D")
        questions.append(Question(subject, row[0], (row[1], row[2], row[3], row[4]), answer))
    return questions


def write_csv(path: Path, questions: Sequence[Question]) -> None:
    """Write `questions` as one MMLU CSV file (atomically)."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(q.row() for q in questions)
    atomic_write_text(path, buffer.getvalue())


def subject_of(path: Path, split: str) -> str:
    """`high_school_mathematics_test.csv` -> `high_school_mathematics`."""
    suffix = f"_{split}"
    return path.stem.removesuffix(suffix)


def load_split(folder: Path, split: str) -> list[Question]:
    """Every question of `split` (`dev`, `val`, `test`) in an MMLU `data/` folder."""
    return [question for path in files_for_split(folder, split, ".csv")
            for question in read_csv(path, subject_of(path, split))]


def _block(question: Question) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices))
    return f"{question.question.strip()}{options}\nAnswer:"


def letter_prompt(question: Question, examples: Sequence[Question] = ()) -> str:
    """The k-shot MMLU prompt for `question`: the subject line, `examples` (dev questions of its
    subject) with their letters, then the question with its four options and `Answer:`."""
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


def letter_requests(questions: Sequence[Question], dev: Sequence[Question] = (), shots: int = 0) -> list[Request]:
    """Four `(letter_prompt, " X")` requests per question, in question order."""
    pool = few_shot_pool(dev)
    requests = []
    for question in questions:
        prompt = letter_prompt(question, pool.get(question.subject, [])[:shots])
        requests += [(prompt, continuation) for continuation in CONTINUATIONS]
    return requests


def cloze_prompt(question: str) -> str:
    """The zero-shot cloze prompt: the options are not shown; each is scored as the answer."""
    return f"Question: {question.strip()}\nAnswer:"


def cloze_continuations(question: Question) -> list[str]:
    """The four continuations a cloze request scores: each option's text after a space."""
    return [f" {choice.strip()}" for choice in question.choices]


def cloze_requests(questions: Sequence[Question]) -> list[Request]:
    """Four `(cloze_prompt, " <option>")` requests per question, in question order."""
    return [(cloze_prompt(question.question), continuation)
            for question in questions for continuation in cloze_continuations(question)]


def chance_of(questions: Sequence[Question]) -> float:
    """What a guesser scores: one in four, or always answering the most common gold letter
    when that does better (a set whose options come in a natural order is skewed)."""
    counts = [sum(q.answer == letter for q in questions) for letter in LETTERS]
    return max(CHANCE, max(counts) / len(questions)) if questions else CHANCE


def chosen(loglikelihoods: Sequence[float], width: int = len(LETTERS)) -> list[int]:
    """The index of the most likely option in each run of `width` log-likelihoods (the first
    on a tie)."""
    if len(loglikelihoods) % width:
        raise ValueError(f"{len(loglikelihoods)} log-likelihoods do not split into groups of {width}")
    return [max(range(width), key=loglikelihoods[start : start + width].__getitem__)
            for start in range(0, len(loglikelihoods), width)]


def accuracy(name: str, questions: Sequence[Question], loglikelihoods: Sequence[float]) -> Score:
    """Accuracy from four log-likelihoods per question (in the order the requests were made)."""
    if len(loglikelihoods) != len(LETTERS) * len(questions):
        raise ValueError(f"{len(questions)} questions need {len(LETTERS) * len(questions)} "
                         f"log-likelihoods, got {len(loglikelihoods)}")
    correct = [float(index == question.gold) for index, question in zip(chosen(loglikelihoods), questions)]
    return Score.from_items(name, correct, chance_of(questions))


def best_continuations(model: Any, prompts: Sequence[str], options: Callable[[int], Sequence[str]]
                       ) -> list[str]:
    """For each prompt, the continuation among `options(i)` (four of them) that `model` (anything
    with `loglikelihoods(requests)`) finds most likely: how a teacher answers a training question."""
    requests = [(prompt, option) for i, prompt in enumerate(prompts) for option in options(i)]
    likelihoods = model.loglikelihoods(requests)
    return [requests[len(LETTERS) * i + index][1] for i, index in enumerate(chosen(likelihoods))]
