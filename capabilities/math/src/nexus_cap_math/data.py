"""GSM8K-format data: JSONL rows `{"question": ..., "answer": "... #### N"}`.

The same loader reads the real GSM8K files and the synthetic word problems the demo teacher
learns from; synthetic problems come from a seeded generator, and the held-out split is kept
out of training by question text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus_kernel.kit.datasets import DatasetError, files_for_split, read_jsonl_rows
from nexus_kernel.run.fsio import atomic_write_text

ANSWER_MARK = "#### "


@dataclass(frozen=True)
class Problem:
    """One GSM8K row: the question and the worked answer that ends in `#### N`."""

    question: str
    answer: str

    @property
    def final(self) -> str:
        """The number after `#### `, as written (it may hold commas, e.g. `1,450,000`)."""
        return self.answer.rsplit(ANSWER_MARK, 1)[1].strip()

    def to_json(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def read_jsonl(path: Path) -> list[Problem]:
    """Every row of a GSM8K JSONL file; a malformed row is an error naming the file and line."""
    problems = []
    for number, row in read_jsonl_rows(path, ("question", "answer")):
        if ANSWER_MARK not in row["answer"]:
            raise DatasetError(f"{path}: line {number}: answer does not end in '{ANSWER_MARK}N'")
        problems.append(Problem(row["question"], row["answer"]))
    return problems


def write_jsonl(path: Path, problems: Sequence[Problem]) -> None:
    """Write `problems` as GSM8K JSONL (atomically)."""
    atomic_write_text(path, "".join(json.dumps(p.to_json()) + "\n" for p in problems))


def load_split(folder: Path, split: str) -> list[Problem]:
    """Rows of `split` from a GSM8K folder: every `<split>*.jsonl` file (e.g. `test.jsonl`,
    `test_sample.jsonl`), in name order."""
    return [problem for path in files_for_split(folder, split, ".jsonl") for problem in read_jsonl(path)]


_NAMES = ("Ann", "Tom", "Mia", "Leo", "Sam", "Zoe", "Max", "Eva", "Ben", "Ivy")
_THINGS = ("apples", "pens", "coins", "books", "cards", "shells", "stamps", "marbles")
TEMPLATE_WORDS = frozenset(
    "Question Answer has and gets more gives away buys sells How many does have now".split()
) | frozenset(_NAMES) | frozenset(_THINGS)


@dataclass(frozen=True)
class SyntheticRecipe:
    """Grade-school word problems: add or take away two whole numbers in `[low, high]`."""

    seed: int = 1234
    low: int = 2
    high: int = 49
    test_size: int = 300
    validation_size: int = 500

    def problem(self, rng: random.Random) -> Problem:
        name, things = rng.choice(_NAMES), rng.choice(_THINGS)
        first, second = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
        if rng.random() < 0.5:
            verb = rng.choice(("gets", "buys"))
            question = (f"{name} has {first} {things} and {verb} {second} more. "
                        f"How many {things} does {name} have now?")
            work, result = f"{first} + {second}", first + second
        else:
            first, second = max(first, second), min(first, second)
            verb = rng.choice(("gives away", "sells"))
            question = (f"{name} has {first} {things} and {verb} {second}. "
                        f"How many {things} does {name} have now?")
            work, result = f"{first} - {second}", first - second
        return Problem(question, f"{work} = {result}\n{ANSWER_MARK}{result}")

    def _distinct(self, label: str, size: int, avoid: set[str]) -> list[Problem]:
        rng = random.Random(f"{self.seed}:{label}")
        seen: dict[str, Problem] = {}
        while len(seen) < size:
            problem = self.problem(rng)
            if problem.question not in avoid:
                seen.setdefault(problem.question, problem)
        return list(seen.values())

    def test(self) -> list[Problem]:
        """The held-out split: `test_size` distinct problems."""
        return self._distinct("test", self.test_size, set())

    def validation(self) -> list[Problem]:
        """`validation_size` distinct problems, none of them held out: what a build watches
        to decide when to stop (the held-out split stays unseen until the end)."""
        return self._distinct("validation", self.validation_size, {p.question for p in self.test()})

    def train(self, seed_offset: int = 0) -> Iterator[Problem]:
        """An endless stream of training problems, none of them held out or for validation."""
        kept_out = {problem.question for problem in (*self.test(), *self.validation())}
        rng = random.Random(f"{self.seed}:train:{seed_offset}")
        while True:
            problem = self.problem(rng)
            if problem.question not in kept_out:
                yield problem
