"""GSM8K data and scoring: the JSONL reader, the synthetic generator and the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nexus_cap_math import benchmark
from nexus_cap_math.data import (
    Problem,
    SyntheticRecipe,
    load_split,
    read_jsonl,
    write_jsonl,
)

from nexus_kernel.errors import DatasetError
from nexus_kernel.kit.testing import shared_data


class EchoModel:
    """A model that answers every prompt from a fixed table of completions."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        return [self.answers[prompt] for prompt in prompts]


@pytest.mark.parametrize(("completion", "strict", "flexible"), [
    ("3 + 4 = 7\n#### 7", "7", "7"),
    ("so the total is $1,450,000.\n#### 1,450,000", "1,450,000", "1,450,000"),
    ("I think it is 12 or 13", None, "13"),
    ("#### -5 apples", "-5", "-5"),
    ("no idea", None, None),
])
def test_answer_extraction_follows_the_harness(completion: str, strict: str | None,
                                               flexible: str | None) -> None:
    assert benchmark.strict_answer(completion) == strict
    assert benchmark.flexible_answer(completion) == flexible


def test_commas_dollars_and_full_stops_do_not_count() -> None:
    problem = Problem("q", "work\n#### 1,450,000")
    scores = benchmark.score([problem] * 3, ["#### 1450000", "#### 1,450,000.", "it is $1,450,000"])
    assert scores[benchmark.STRICT].per_item == (1.0, 1.0, 0.0)
    assert scores[benchmark.FLEXIBLE].per_item == (1.0, 1.0, 1.0)
    assert scores[benchmark.STRICT].chance == 0.0


def test_reader_names_the_file_and_line_of_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n{oops\n")
    with pytest.raises(DatasetError, match=r"test.jsonl: line 2: not JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1: missing text field 'answer'"):
        read_jsonl(path)
    path.write_text(json.dumps({"question": "q", "answer": "42"}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1: answer does not end in '#### N'"):
        read_jsonl(path)
    with pytest.raises(DatasetError, match="no 'train' files"):
        load_split(tmp_path, "train")


def test_synthetic_problems_round_trip_through_gsm8k_jsonl(tmp_path: Path) -> None:
    recipe = SyntheticRecipe(test_size=50)
    test = recipe.test()
    write_jsonl(tmp_path / "test.jsonl", test)
    assert load_split(tmp_path, "test") == test
    assert recipe.test() == test, "the generator is not deterministic"
    assert len({p.question for p in test}) == 50
    held_out = {p.question for p in test}
    stream = recipe.train()
    assert not any(next(stream).question in held_out for _ in range(2000))
    for problem in test:
        work, final = problem.answer.split(f"\n{'#### '}")
        left, result = work.split(" = ")
        assert eval(left) == int(result) == int(final)  # noqa: S307 - our own generated arithmetic


def test_a_perfect_model_scores_one_and_a_wrong_one_zero_on_synthetic_items() -> None:
    problems = SyntheticRecipe(test_size=40).test()
    perfect = EchoModel({benchmark.prompt_of(p): " " + p.answer for p in problems})
    wrong = EchoModel({benchmark.prompt_of(p): f" #### {int(p.final) + 1}" for p in problems})
    assert benchmark.evaluate(perfect, problems)[benchmark.STRICT].value == 1.0
    assert benchmark.evaluate(wrong, problems)[benchmark.STRICT].value == 0.0


def test_real_gsm8k_samples_load_and_score() -> None:
    folder = shared_data("gsm8k", __file__)
    for split, rows in (("train", 200), ("test", 100)):
        problems = load_split(folder, split)
        lines = [line for path in folder.glob(f"{split}*.jsonl")
                 for line in path.read_text().splitlines() if line.strip()]
        assert len(problems) == len(lines) == rows
        perfect = EchoModel({benchmark.prompt_of(p): p.answer for p in problems})
        scores = benchmark.evaluate(perfect, problems)
        assert scores[benchmark.STRICT].value == 1.0
        assert scores[benchmark.FLEXIBLE].value == 1.0
        assert scores[benchmark.STRICT].n == rows
        wrong = EchoModel({benchmark.prompt_of(p): f"#### {p.final}1" for p in problems})
        assert benchmark.evaluate(wrong, problems)[benchmark.STRICT].value == 0.0
