"""The shared multiple-choice module: choosing, accuracy, the two request styles, a teacher's pick."""

from __future__ import annotations

import pytest

from nexus_modalities.multiple_choice import (
    CONTINUATIONS,
    Question,
    accuracy,
    best_continuations,
    chosen,
    cloze_requests,
    letter_requests,
)

KENYA = Question("geography", "What is the capital of Kenya? ", ("Lagos", " Nairobi", "Cairo", "Accra"), "B")


class Table:
    """Log-likelihoods looked up by `(prompt, continuation)`, -9 for anything else."""

    def __init__(self, values: dict[tuple[str, str], float]) -> None:
        self.values = values

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[float]:
        return [self.values.get(request, -9.0) for request in requests]


def test_chosen_takes_the_largest_of_each_group_and_the_first_on_a_tie() -> None:
    assert chosen([-3.0, -1.0, -2.0, -5.0, 0.0, 0.0, -1.0, -1.0]) == [1, 0]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        chosen([0.0] * 6)


def test_accuracy_counts_the_gold_choices_and_names_a_short_list() -> None:
    score = accuracy("toy", [KENYA, KENYA], [-3.0, -1.0, -2.0, -5.0, 0.0, -1.0, -2.0, -3.0])
    assert (score.value, score.n, score.per_item, score.chance) == (0.5, 2, (1.0, 0.0), 1.0)
    with pytest.raises(ValueError, match="2 questions need 8 log-likelihoods, got 4"):
        accuracy("toy", [KENYA, KENYA], [0.0] * 4)


def test_the_two_request_styles() -> None:
    prompt = "Question: What is the capital of Kenya?\nAnswer:"
    assert cloze_requests([KENYA]) == [(prompt, " Lagos"), (prompt, " Nairobi"), (prompt, " Cairo"),
                                       (prompt, " Accra")]
    letters = letter_requests([KENYA])
    assert [continuation for _, continuation in letters] == list(CONTINUATIONS)
    assert letters[0][0].endswith("What is the capital of Kenya?\nA. Lagos\nB.  Nairobi\nC. Cairo\nD. Accra\nAnswer:")


def test_best_continuations_is_the_teachers_pick_among_each_prompts_own_options() -> None:
    model = Table({("p1", " b"): -1.0, ("p1", " a"): -2.0, ("p2", " z"): -0.5})
    options = {0: [" a", " b", " c", " d"], 1: [" w", " x", " y", " z"]}
    assert best_continuations(model, ["p1", "p2"], options.__getitem__) == [" b", " z"]
