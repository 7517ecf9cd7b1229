"""Vision data and scoring: image folders with question JSONL, the scene painter, the scorer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from nexus_cap_vision import benchmark
from nexus_cap_vision.data import (
    COLOURS,
    PLACES,
    SyntheticRecipe,
    Thing,
    VisualQuestion,
    draw,
    load_split,
    write_split,
)

from nexus_kernel.errors import DatasetError


class TableModel:
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    def answer(self, images: list[np.ndarray], prompts: list[str], max_new_tokens: int) -> list[str]:
        assert len(images) == len(prompts) == len(self.answers)
        return self.answers


def test_synthetic_split_round_trips_through_png_and_jsonl(tmp_path: Path) -> None:
    questions = SyntheticRecipe(test_size=30).test()
    write_split(tmp_path, "test", questions)
    loaded = load_split(tmp_path, "test")
    assert [(q.question, q.answer) for q in loaded] == [(q.question, q.answer) for q in questions]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(loaded, questions))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(SyntheticRecipe(test_size=30).test(), questions))


def test_painted_colours_and_places_are_where_the_answer_says() -> None:
    things = [Thing("square", "red", (0, 1)), Thing("circle", "blue", (1, 0))]
    image = draw(things, random.Random(0))
    assert (image[:16, 16:] == COLOURS["red"]).all(axis=2).sum() > 20
    assert (image[16:, :16] == COLOURS["blue"]).all(axis=2).sum() > 20
    assert (image[:16, :16] == 245).all() and (image[16:, 16:] == 245).all()
    checked = 0
    for question in SyntheticRecipe(test_size=200).test():
        if question.question == "Where is the shape?":
            for (row, col), name in PLACES.items():
                cell = question.image[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16]
                assert (cell != 245).any() == (name == question.answer)
            checked += 1
    assert checked > 20


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "a.png", "question": "q"}) + "\n")
    with pytest.raises(DatasetError, match=r"test.jsonl: line 1: missing text field 'answer'"):
        load_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "../a.png", "question": "q", "answer": "a"}))
    with pytest.raises(DatasetError, match=r"line 1: image '../a.png' is outside"):
        load_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "a.png", "question": "q", "answer": "a"}))
    (tmp_path / "a.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"a.png: not a readable image"):
        load_split(tmp_path, "test")


def test_other_image_sizes_are_resized(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "big.jpg")
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "big.jpg", "question": "q", "answer": "a"}))
    [question] = load_split(tmp_path, "val")
    assert question.image.shape == (32, 32, 3)


def test_scorer_exact_match_and_chance() -> None:
    blank = np.zeros((32, 32, 3), np.uint8)
    questions = [VisualQuestion(blank, "q", answer) for answer in ("yes", "yes", "no", "Red")]
    scores = benchmark.evaluate(TableModel([" Yes", "no", "no", "red."]), questions)
    assert scores[benchmark.NAME].per_item == (1.0, 0.0, 1.0, 1.0)
    assert scores[benchmark.NAME].chance == 0.5
    assert benchmark.evaluate(TableModel([q.answer for q in questions]), questions)[benchmark.NAME].value == 1.0
