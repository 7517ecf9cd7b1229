"""MMLU data and scoring: the CSV reader, k-shot prompts, the synthetic generator, the scorer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from nexus_cap_reasoning import benchmark
from nexus_cap_reasoning.data import (
    LETTERS,
    Question,
    SyntheticRecipe,
    load_split,
    read_csv,
    write_csv,
)

from nexus_kernel.errors import DatasetError
from nexus_kernel.kit.testing import shared_data


class LetterModel:
    """Gives log-likelihood 0 to the letter `choose` picks for each prompt, -5 to the others."""

    def __init__(self, choose: dict[str, str]) -> None:
        self.choose = choose
        self.requests: list[tuple[str, str]] = []

    def loglikelihoods(self, requests: list[tuple[str, str]]) -> list[float]:
        self.requests += requests
        return [0.0 if continuation == f" {self.choose[prompt]}" else -5.0
                for prompt, continuation in requests]


def _model_for(questions: list[Question], dev: list[Question], shots: int, right: bool) -> LetterModel:
    prompts = [prompt for prompt, _ in benchmark.requests_for(questions, dev, shots)[:: len(LETTERS)]]
    wrong = {letter: LETTERS[(LETTERS.index(letter) + 1) % 4] for letter in LETTERS}
    return LetterModel({prompt: q.answer if right else wrong[q.answer] for prompt, q in zip(prompts, questions)})


def test_quoted_fields_with_commas_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "logic_dev.csv"
    path.parent.mkdir()
    path.write_text('"If a, then b.\nSo?",b,"not b, surely","a\nand b",neither,A\nQ2,1,2,3,4,D')
    questions = load_split(tmp_path, "dev")
    assert [q.question for q in questions] == ["If a, then b.\nSo?", "Q2"]
    assert questions[0].choices == ("b", "not b, surely", "a\nand b", "neither")
    assert [q.subject for q in questions] == ["logic", "logic"]
    write_csv(tmp_path / "copy.csv", questions)
    assert read_csv(tmp_path / "copy.csv", "logic") == questions


@pytest.mark.parametrize(("text", "message"), [
    ("q,a,b,c,A\n", r"row 1: expected 6 fields .* found 5"),
    ("q,a,b,c,d,A\nq,a,b,c,d,E\n", r"row 2: answer 'E' is not one of A, B, C, D"),
])
def test_bad_rows_name_the_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x_test.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"x_test.csv: {message}"):
        read_csv(path, "x")


def test_prompt_follows_the_harness_format() -> None:
    dev = [Question("high_school_mathematics", "1+1?", ("1", "2", "3", "4"), "B")]
    question = Question("high_school_mathematics", "2+2?", ("4", "3", "2", "1"), "A")
    assert benchmark.prompt_of(question, dev) == (
        "The following are multiple choice questions (with answers) about high school mathematics.\n\n"
        "1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+2?\nA. 4\nB. 3\nC. 2\nD. 1\nAnswer:")


def _solve(question: Question) -> tuple[str, str]:
    """An independent solver for the synthetic questions: (kind, gold letter)."""
    words = question.question.replace("?", "").replace(".", "").split()
    if words[0] == "In":
        ranges = [tuple(map(int, choice.split(" to "))) for choice in question.choices]
        number = int(words[-1])
        return "range", LETTERS[[low <= number <= high for low, high in ranges].index(True)]
    if words[0] == "Is":
        first, second = int(words[1]), int(words[-1])
        return "compare", "A" if first < second else "B" if first == second else "C"
    older_first = words[2] == "older"
    ages = {question.choices[0]: 2, question.choices[1]: 1, question.choices[2]: 0}
    if not older_first:
        ages = {name: -age for name, age in ages.items()}
    if words[-1] == "middle":
        target = sorted(ages, key=ages.get)[1]
    else:
        target = (max if words[-1] == "oldest" else min)(ages, key=ages.get)
    return "order", LETTERS[question.choices.index(target)]


def test_synthetic_questions_have_one_right_option_and_round_trip(tmp_path: Path) -> None:
    recipe = SyntheticRecipe(test_size=80)
    test = recipe.test()
    assert recipe.test() == test
    write_csv(tmp_path / "test" / "reasoning_test.csv", test)
    assert load_split(tmp_path, "test") == test
    kinds = set()
    for question in test:
        kinds.add(_solve(question)[0])
        assert _solve(question)[1] == question.answer, question
    assert kinds == {"range", "compare", "order"}
    held_out = {"|".join(q.row()) for q in test}
    assert {"|".join(q.row()) for q in recipe.dev()}.isdisjoint(held_out)
    stream = recipe.train()
    assert not any("|".join(next(stream).row()) in held_out for _ in range(2000))


def test_real_mmlu_samples_load_and_score_with_five_shots() -> None:
    folder = shared_data("mmlu", __file__)
    dev, test = load_split(folder, "dev"), load_split(folder, "test")
    for split, questions in (("dev", dev), ("test", test)):
        records = [row for path in (folder / split).glob("*.csv")
                   for row in csv.reader(path.open(newline="", encoding="utf-8")) if row]
        assert len(questions) == len(records)
    assert len(dev) == 57 * 5
    assert len({q.subject for q in test}) == 3
    perfect = _model_for(test, dev, 5, right=True)
    scores = benchmark.evaluate(perfect, test, dev, shots=5)
    assert scores[benchmark.NAME].value == 1.0
    assert scores[benchmark.NAME].n == len(test)
    majority = max(sum(q.answer == letter for q in test) for letter in LETTERS) / len(test)
    assert scores[benchmark.NAME].chance == max(0.25, majority)
    assert benchmark.chance_of([q for q in test if q.answer == "A"][:3] + [q for q in test if q.answer == "B"][:1]) == 0.75
    prompt = perfect.requests[0][0]
    assert prompt.count("\nAnswer:") == 6 and prompt.endswith("\nAnswer:")
    assert benchmark.evaluate(_model_for(test, dev, 5, right=False), test, dev, shots=5)[benchmark.NAME].value == 0.0
