"""The retention rule and its bootstrap interval."""

from __future__ import annotations

import random

import pytest

from nexus_kernel import Score
from nexus_kernel.algorithms.retention import bootstrap_ratio, verdict


def _scores(teacher: list[float], student: list[float], chance: float = 0.25) -> tuple[dict, dict]:
    return (Score.from_items("bench", teacher, chance).to_json(with_items=True),
            Score.from_items("bench", student, chance).to_json(with_items=True))


def test_a_student_that_keeps_the_score_passes_with_an_interval_around_its_ratio() -> None:
    rng = random.Random(0)
    teacher = [float(rng.random() < 0.95) for _ in range(300)]
    student = [t if rng.random() < 0.98 else 1 - t for t in teacher]
    result = verdict(*_scores(teacher, student))
    low, high = result["interval"]
    assert low <= result["ratio"] <= high and high - low < 0.1
    assert result["status"] == ("pass" if result["ratio"] >= 0.97 else "below 0.97")
    assert verdict(*_scores(teacher, student))["interval"] == result["interval"]  # seeded


def test_more_items_narrow_the_interval_and_a_weak_student_fails() -> None:
    small = bootstrap_ratio([1.0, 1.0, 0.0, 1.0] * 10, [1.0, 0.0, 0.0, 1.0] * 10)
    large = bootstrap_ratio([1.0, 1.0, 0.0, 1.0] * 200, [1.0, 0.0, 0.0, 1.0] * 200)
    assert large[1] - large[0] < small[1] - small[0]
    assert large[0] < 2 / 3 < large[1]
    teacher, student = _scores([1.0] * 90 + [0.0] * 10, [1.0] * 60 + [0.0] * 40)
    assert verdict(teacher, student)["status"] == "below 0.97"


def test_a_teacher_near_chance_is_not_measurable_never_a_pass() -> None:
    teacher, student = _scores([1.0] * 30 + [0.0] * 70, [1.0] * 100)  # teacher 0.30, chance 0.25
    result = verdict(teacher, student)
    assert result["status"] == "not measurable" and result["ratio"] is None
    with pytest.raises(ValueError, match="paired scores"):
        bootstrap_ratio([1.0], [1.0, 0.0])
