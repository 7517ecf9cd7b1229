"""The retention rule (student >= 0.97 x teacher; a teacher near chance is not measurable) and
its bootstrap interval, on hand-checked figures."""

from __future__ import annotations

from typing import Any

import pytest

from nexus_kernel import Score
from nexus_kernel.algorithms.retention import bootstrap_ratio, verdict


def _score(value: float, chance: float = 0.25) -> dict[str, Any]:
    return {"benchmark": "bench", "value": value, "n": 100, "chance": chance}


def _items(ones: int, n: int, chance: float = 0.25) -> dict[str, Any]:
    """A score of `ones` correct items out of `n`, with its per-item results."""
    return Score.from_items("bench", [1.0] * ones + [0.0] * (n - ones), chance).to_json(with_items=True)


@pytest.mark.parametrize(("teacher", "student", "status", "ratio"), [
    (1.0, 0.97, "pass", 0.97),  # exactly 0.97 x teacher passes
    (0.5, 0.485, "pass", 0.97),  # the same boundary on a teacher below 1
    (1.0, 0.969, "below 0.97", 0.969),  # just below
    (0.5, 0.4849, "below 0.97", 0.9698),
    (0.8, 0.8, "pass", 1.0),
    (0.8, 0.9, "pass", 1.125),  # a student above its teacher passes too
    (0.8, 0.4, "below 0.97", 0.5),
])
def test_the_pass_rule_at_and_around_the_threshold(teacher: float, student: float, status: str,
                                                   ratio: float) -> None:
    result = verdict(_score(teacher), _score(student))
    assert result["status"] == status
    assert result["ratio"] == pytest.approx(ratio, abs=1e-12)
    assert result["interval"] is None  # no per-item results, no interval


@pytest.mark.parametrize(("teacher", "chance"), [
    (0.25, 0.25),  # at chance
    (0.325, 0.25),  # exactly a tenth of the way from chance to perfect
    (0.3, 0.25),
    (0.1, 0.0),  # a tenth of the way on a benchmark whose chance is 0
    (0.0, 0.0),  # a teacher that scores nothing
])
def test_a_teacher_at_or_near_chance_is_not_measurable_never_a_pass(teacher: float, chance: float) -> None:
    result = verdict(_score(teacher, chance), _score(1.0, chance))
    assert (result["status"], result["ratio"], result["interval"]) == ("not measurable", None, None)
    assert result["why"] == f"teacher {teacher:.3f} is at or near chance {chance:.3f}"


@pytest.mark.parametrize(("teacher", "chance", "student", "status"), [
    (0.33, 0.25, 0.33, "pass"),  # just past a tenth of the way from chance 0.25
    (0.11, 0.0, 0.1, "below 0.97"),  # just past it from chance 0: measured, and 0.1 / 0.11 < 0.97
])
def test_a_teacher_just_above_the_chance_band_is_measured(teacher: float, chance: float, student: float,
                                                          status: str) -> None:
    assert verdict(_score(teacher, chance), _score(student, chance))["status"] == status


def test_the_verdict_of_per_item_scores_uses_their_means() -> None:
    result = verdict(_items(100, 100), _items(97, 100))
    assert result["status"] == "pass" and result["ratio"] == 0.97
    result = verdict(_items(1000, 1000), _items(969, 1000))
    assert result["status"] == "below 0.97" and result["ratio"] == 0.969


def test_intervals_whose_every_resample_has_the_same_ratio() -> None:
    teacher = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    # The student matches its teacher item by item: every paired resample has ratio 1.
    assert bootstrap_ratio(teacher, teacher) == (1.0, 1.0)
    # Half of the teacher on every item: every resample has ratio 0.5.
    assert bootstrap_ratio(teacher, [0.5 * t for t in teacher]) == (0.5, 0.5)
    assert bootstrap_ratio([1.0] * 10, [0.0] * 10) == (0.0, 0.0)
    # A teacher that scores nothing has no ratio in any resample.
    assert bootstrap_ratio([0.0] * 10, [1.0] * 10) == (0.0, 0.0)


def test_the_interval_surrounds_the_ratio_narrows_with_items_and_repeats() -> None:
    # Teacher 3/4, student 2/4 on each block of four items: ratio 2/3.
    small = bootstrap_ratio([1.0, 1.0, 0.0, 1.0] * 10, [1.0, 0.0, 0.0, 1.0] * 10)
    large = bootstrap_ratio([1.0, 1.0, 0.0, 1.0] * 200, [1.0, 0.0, 0.0, 1.0] * 200)
    assert small[0] < 2 / 3 < small[1] and large[0] < 2 / 3 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_ratio([1.0, 1.0, 0.0, 1.0] * 10, [1.0, 0.0, 0.0, 1.0] * 10) == small  # seeded
    result = verdict(_items(75, 100), _items(50, 100))
    assert result["interval"][0] < result["ratio"] < result["interval"][1]


def test_unpaired_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="paired scores needed: 1 teacher and 2 student items"):
        bootstrap_ratio([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="paired scores needed: 0 teacher and 0 student items"):
        bootstrap_ratio([], [])
