"""MMLU-format data (`nexus_modalities.multiple_choice`: CSV files without a header, six
columns, one file per subject under `dev/`, `val/` or `test/`) and the synthetic questions the
demo teacher learns from (questions that need one small reasoning step: test each option, name
the letter). The same reader takes the real MMLU `data/` folder.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from nexus_modalities.multiple_choice import LETTERS, Question, load_split, read_csv, subject_of, write_csv

__all__ = [
    "LETTERS",
    "TEMPLATE_WORDS",
    "Question",
    "SyntheticRecipe",
    "load_split",
    "read_csv",
    "subject_of",
    "write_csv",
]

_NAMES = ("Ann", "Tom", "Mia", "Leo", "Sam", "Zoe", "Max", "Eva", "Ben", "Ivy")
TEMPLATE_WORDS = frozenset(
    "The following are multiple choice questions with answers about reasoning Answer In which "
    "range is to Is smaller than equal or larger cannot tell older younger Who the oldest "
    "youngest middle".split()
) | frozenset(_NAMES)
SUBJECT = "reasoning"


@dataclass(frozen=True)
class SyntheticRecipe:
    """Four-choice questions that each need one step of reasoning: place a number in a range,
    compare two numbers, or order three people from two comparisons. Options come in a fixed
    natural order (ranges ascending, people in order of mention), as many MMLU items do."""

    seed: int = 1234
    dev_size: int = 5
    test_size: int = 300
    validation_size: int = 500

    def question(self, rng: random.Random) -> Question:
        kind = rng.randrange(3)
        if kind == 0:
            number = rng.randrange(10, 100)
            choices = ("10 to 29", "30 to 49", "50 to 69", "70 to 99")
            answer = min(3, (number - 10) // 20)
            return Question(SUBJECT, f"In which range is {number}?", choices, LETTERS[answer])
        if kind == 1:
            tens = rng.sample(range(1, 10), 2)
            first, second = (10 * ten + rng.randrange(10) for ten in tens)
            choices = ("smaller", "equal", "larger", "cannot tell")
            answer = 0 if first < second else 2
            return Question(SUBJECT, f"Is {first} smaller than, equal to or larger than {second}?",
                            choices, LETTERS[answer])
        names = rng.sample(_NAMES, 3)
        relation, asked = rng.choice(("older", "younger")), rng.choice(("oldest", "youngest", "middle"))
        text = (f"{names[0]} is {relation} than {names[1]}. {names[1]} is {relation} than {names[2]}. "
                + ("Who is in the middle?" if asked == "middle" else f"Who is the {asked}?"))
        first_is_asked = (relation == "older") == (asked == "oldest")
        answer = 1 if asked == "middle" else 0 if first_is_asked else 2
        return Question(SUBJECT, text, (*names, "cannot tell"), LETTERS[answer])

    def _distinct(self, label: str, size: int, avoid: set[str]) -> list[Question]:
        rng = random.Random(f"{self.seed}:{label}")
        found: dict[str, Question] = {}
        while len(found) < size:
            question = self.question(rng)
            key = "|".join(question.row())
            if key not in avoid:
                found.setdefault(key, question)
        return list(found.values())

    def test(self) -> list[Question]:
        """The held-out split."""
        return self._distinct("test", self.test_size, set())

    def dev(self) -> list[Question]:
        """Few-shot examples, distinct from the held-out split."""
        return self._distinct("dev", self.dev_size, {"|".join(q.row()) for q in self.test()})

    def validation(self) -> list[Question]:
        """`validation_size` distinct questions, none of them held out: what a build watches to
        decide when to stop (the held-out split stays unseen until the end). Unlike the held-out
        split they are not kept out of training: the range questions have only 90 forms, the
        held-out split takes about 60 of them, and keeping the rest out too would leave none
        to learn from (a build then scored 0.83 held-out at 0.94 validation)."""
        return self._distinct("validation", self.validation_size, {"|".join(q.row()) for q in self.test()})

    def train(self) -> Iterator[Question]:
        """An endless stream of training questions, none of them held out."""
        kept_out = {"|".join(q.row()) for q in self.test()}
        rng = random.Random(f"{self.seed}:train")
        while True:
            question = self.question(rng)
            if "|".join(question.row()) not in kept_out:
                yield question
