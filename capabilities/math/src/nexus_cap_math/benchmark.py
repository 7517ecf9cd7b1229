"""GSM8K scoring as lm-evaluation-harness does it, one scorer for teacher and student.

The headline is strict exact match: the number after `#### ` in the model's answer against the
gold one. The second figure, flexible, takes the last number anywhere in the answer. Both
compare after removing commas, `$` and a trailing full stop, so `#### 1,450,000` matches
`1450000`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nexus_cap_math.data import Problem
from nexus_kernel import Score

STRICT = "GSM8K"
FLEXIBLE = "GSM8K flexible"
PROMPT = "Question: {question}\nAnswer:"
MAX_ANSWER_TOKENS = 48

_STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORED = re.compile(r",|\$|(?s:.*#### )|\.$")


def prompt_of(problem: Problem) -> str:
    """The zero-shot prompt; the model answers after `Answer:` and ends with `#### N`."""
    return PROMPT.format(question=problem.question)


def normalise(answer: str) -> str:
    return _IGNORED.sub("", answer.strip()).strip()


def strict_answer(completion: str) -> str | None:
    """The number after the first `#### `, or None."""
    match = _STRICT_PATTERN.search(completion)
    return match.group(1) if match else None


def flexible_answer(completion: str) -> str | None:
    """The last number anywhere in the completion, or None."""
    matches = _FLEXIBLE_PATTERN.findall(completion)
    if not matches:
        return None
    wide, narrow = matches[-1]
    return wide or narrow


def _matches(found: str | None, gold: str) -> float:
    return float(found is not None and normalise(found) == normalise(gold))


def score(problems: Sequence[Problem], completions: Sequence[str]) -> dict[str, Score]:
    """Strict and flexible exact match of `completions` (one per problem). Chance is 0."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    strict = [_matches(strict_answer(text), p.final) for p, text in zip(problems, completions)]
    flexible = [_matches(flexible_answer(text), p.final) for p, text in zip(problems, completions)]
    return {STRICT: Score.from_items(STRICT, strict, 0.0),
            FLEXIBLE: Score.from_items(FLEXIBLE, flexible, 0.0)}


def evaluate(model: object, problems: Sequence[Problem]) -> dict[str, Score]:
    """Score a text model (anything with `generate(prompts, max_new_tokens)`) on `problems`."""
    completions = model.generate([prompt_of(p) for p in problems], MAX_ANSWER_TOKENS)  # type: ignore[attr-defined]
    return score(problems, completions)
