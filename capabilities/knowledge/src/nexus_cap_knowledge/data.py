"""Knowledge data: MMLU-format questions (`nexus_modalities.multiple_choice`), from a real MMLU
folder or from the built-in facts (`facts.py`).

The synthetic questions are split by fact: a stable hash of `relation|subject` puts each fact
either in the held-out split or in training, so a held-out question is about a fact no
training question mentions (its wrong options may be other facts' answers). Each held-out fact
is asked once, with seeded wrong options and the right one at a balanced position (each letter
is gold for a quarter of the items, so chance stays 0.25); training facts are asked again and
again, with fresh wrong options and positions each time.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nexus_cap_knowledge.facts import RELATIONS, Relation
from nexus_modalities.multiple_choice import LETTERS, Question, load_split, read_csv, write_csv

__all__ = ["Fact", "Question", "SyntheticRecipe", "facts_of", "load_split", "question_about", "read_csv",
           "write_csv"]


@dataclass(frozen=True)
class Fact:
    """One `(subject, answer)` of a relation, and the stable hash that splits it."""

    relation: Relation
    subject: str
    answer: str

    @property
    def key(self) -> str:
        return f"{self.relation.name}|{self.subject}"

    def fraction(self) -> float:
        """Where the fact falls in [0, 1): the first 8 bytes of SHA-256 of its key."""
        return int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "big") / 2**64


def facts_of(relations: Iterable[Relation]) -> list[Fact]:
    """Every fact of `relations`, in table order."""
    return [Fact(relation, subject, answer) for relation in relations for subject, answer in relation.facts]


def question_about(fact: Fact, rng: random.Random, position: int) -> Question:
    """The four-way question about `fact`: three wrong options drawn by `rng` (from the
    relation's other answers, or its `wrong_forms`), the right one at `position` (0-3). The
    subject column is the relation (`animal_class`), as an MMLU file's subject."""
    relation = fact.relation
    if relation.wrong_forms is not None:
        pool = relation.wrong_forms(fact.subject, fact.answer)
    else:
        pool = [answer for answer in relation.answers() if answer != fact.answer]
    wrong = rng.sample(pool, len(LETTERS) - 1)
    choices = (*wrong[:position], fact.answer, *wrong[position:])
    return Question(relation.name.replace(" ", "_"), relation.question(fact.subject), choices,  # type: ignore[arg-type]
                    LETTERS[position])


@dataclass(frozen=True)
class SyntheticRecipe:
    """Questions about the built-in facts of `relations` (names; empty: `facts.RELATIONS`).
    A `test_share` of the facts (by hash) is held out: 238 of the 395, so the held-out
    accuracy's interval is narrow (about +-0.05), leaving 157 facts to train the format on."""

    seed: int = 1234
    test_share: float = 0.6
    relations: tuple[str, ...] = ()

    def chosen_relations(self) -> list[Relation]:
        if not self.relations:
            return list(RELATIONS)
        from nexus_cap_knowledge.facts import ALL_RELATIONS

        known = {relation.name: relation for relation in ALL_RELATIONS}
        unknown = [name for name in self.relations if name not in known]
        if unknown:
            raise ValueError(f"unknown relations {unknown}; known: {sorted(known)}")
        return [known[name] for name in self.relations]

    def _split(self, held_out: bool) -> list[Fact]:
        """The facts of one side, in hash order (so the first N mix relations)."""
        facts = [fact for fact in facts_of(self.chosen_relations()) if (fact.fraction() < self.test_share) == held_out]
        return sorted(facts, key=Fact.fraction)

    def test(self) -> list[Question]:
        """The held-out split: one question per held-out fact, gold letters A, B, C, D in turn."""
        return [question_about(fact, random.Random(f"{self.seed}:test:{fact.key}"), index % len(LETTERS))
                for index, fact in enumerate(self._split(held_out=True))]

    def train_facts(self) -> list[Fact]:
        """The facts training questions are about (none of them held out)."""
        return self._split(held_out=False)

    def train(self) -> Iterator[Question]:
        """An endless stream of training questions: every training fact once per pass, in a
        seeded order, with fresh wrong options and position each time."""
        facts = self.train_facts()
        rng = random.Random(f"{self.seed}:train")
        while True:
            for fact in rng.sample(facts, len(facts)):
                yield question_about(fact, rng, rng.randrange(len(LETTERS)))
