"""Vision data in two layouts, read with Pillow:

- visual questions (image-to-text teachers): a folder of images plus a JSONL file per split
  whose rows are `{"image": "<path relative to the folder>", "question": ..., "answer": ...}`;
- labelled images (image-encoder teachers): the image-folder layout `<split>/<label>/<image>`
  (`load_image_folder`), e.g. what `python -m nexus_cap_vision.digits` writes.

The synthetic scenes are drawn with numpy (shapes, colours, counts and positions on a 2x2
grid): questions about them (`SyntheticRecipe`), or single shapes labelled by colour and kind
(`LabelledRecipe`).
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nexus_kernel.kit.datasets import DatasetError, files_for_split, read_jsonl_rows
from nexus_kernel.run.fsio import atomic_write_bytes, atomic_write_text

IMAGE_SIZE = 32


@dataclass(frozen=True)
class VisualQuestion:
    """One image (H x W x 3 uint8) with a question and its short answer."""

    image: np.ndarray
    question: str
    answer: str


@dataclass(frozen=True)
class LabelledImage:
    """One RGB uint8 image (H x W x 3, its own size) and its class label."""

    image: np.ndarray
    label: str


def read_image(path: Path, size: int | None = IMAGE_SIZE) -> np.ndarray:
    """An image file as `size` x `size` RGB uint8 (resized bilinearly when needed; None keeps
    its own size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return rgb if size is None else resized(rgb, size)


def read_jsonl(path: Path, size: int = IMAGE_SIZE) -> list[VisualQuestion]:
    """Every row of a questions JSONL file, images loaded; a bad row names the file and line."""
    questions = []
    folder = path.parent.resolve()
    for number, row in read_jsonl_rows(path, ("image", "question", "answer")):
        image_path = (folder / row["image"]).resolve()
        if not image_path.is_relative_to(folder):
            raise DatasetError(f"{path}: line {number}: image {row['image']!r} is outside {path.parent}")
        questions.append(VisualQuestion(read_image(image_path, size), row["question"], row["answer"]))
    return questions


def load_split(folder: Path, split: str, size: int = IMAGE_SIZE) -> list[VisualQuestion]:
    """Every question of `split` in a folder holding `<split>*.jsonl` files and their images."""
    return [q for path in files_for_split(folder, split, ".jsonl") for q in read_jsonl(path, size)]


def resized(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """An RGB uint8 image as `size` x `size` (bilinear; unchanged when it already is)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image_folder(folder: Path, split: str) -> list[LabelledImage]:
    """Every image of `<folder>/<split>/<label>/` (files with `IMAGE_SUFFIXES`; hidden files and
    folders are left out), at its own size, labelled by its sub-folder.
    The order takes one image of each label in turn (files by name within a label), so any
    prefix, such as the first `eval_samples`, holds every label. A missing split, a split with
    fewer than two labels, or an unreadable image is a `DatasetError` naming the path."""
    root = folder / split
    if not root.is_dir():
        raise DatasetError(f"{folder}: no {split!r} folder; labelled images are read from "
                           f"{split}/<label>/<image> (e.g. {split}/7/0001.png)")
    labels = {child.name: sorted(path for path in child.iterdir()
                                 if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
              for child in sorted(root.iterdir()) if child.is_dir() and not child.name.startswith(".")}
    labels = {label: files for label, files in labels.items() if files}
    if len(labels) < 2:
        raise DatasetError(f"{root}: found images under {len(labels)} label folders; centroid accuracy needs "
                           f"at least two ({split}/<label>/<image>, suffixes {', '.join(IMAGE_SUFFIXES)})")
    rounds = itertools.zip_longest(*labels.values())
    ordered = [(path.parent.name, path) for row in rounds for path in row if path is not None]
    return [LabelledImage(read_image(path, None), label) for label, path in ordered]


def write_image_folder(folder: Path, split: str, images: Sequence[LabelledImage]) -> None:
    """Write `images` as `<folder>/<split>/<label>/<index>.png` (each file atomically)."""
    from PIL import Image

    for index, item in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(item.image).save(buffer, format="PNG")
        atomic_write_bytes(folder / split / item.label / f"{index:05d}.png", buffer.getvalue())


def write_split(folder: Path, split: str, questions: Sequence[VisualQuestion]) -> None:
    """Write `questions` as PNG images plus `<split>.jsonl` (each file atomically)."""
    from PIL import Image

    rows = []
    for index, question in enumerate(questions):
        name = f"images/{split}_{index:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(question.image).save(buffer, format="PNG")
        atomic_write_bytes(folder / name, buffer.getvalue())
        rows.append(json.dumps({"image": name, "question": question.question, "answer": question.answer}))
    atomic_write_text(folder / f"{split}.jsonl", "".join(row + "\n" for row in rows))


COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {(0, 0): "top left", (0, 1): "top right", (1, 0): "bottom left", (1, 1): "bottom right"}
TEMPLATE_WORDS = frozenset(
    "How many shapes are there What colour is the shape it Where top bottom left "
    "right one two three four".split()
) | frozenset(COLOURS) | frozenset(SHAPES)
_NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cell: tuple[int, int]


def draw(things: Sequence[Thing], rng: random.Random, size: int = IMAGE_SIZE) -> np.ndarray:
    """A light background with each thing drawn in its grid cell, jittered a little."""
    image = np.full((size, size, 3), 245, dtype=np.uint8)
    half = size // 2
    rows, cols = np.mgrid[0:half, 0:half]
    for thing in things:
        cy, cx = half // 2 + rng.randint(-1, 1), half // 2 + rng.randint(-1, 1)
        radius = rng.randint(half // 4 + 1, half // 3 + 1)
        if thing.shape == "circle":
            mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        elif thing.shape == "square":
            mask = (abs(rows - cy) < radius) & (abs(cols - cx) < radius)
        else:
            mask = (rows >= cy - radius) & (rows <= cy + radius) & (abs(cols - cx) * 2 <= rows - cy + radius)
        row, col = thing.cell
        image[row * half : (row + 1) * half, col * half : (col + 1) * half][mask] = COLOURS[thing.colour]
    return image


@dataclass(frozen=True)
class SyntheticRecipe:
    """Questions about one shape (its colour, kind, or place on a 2x2 grid) or about a scene of
    one to three shapes of distinct kinds and colours (how many). (Presence questions, "Is there
    a circle?", are not asked: in three 1,500-step builds of the demo teacher they stayed at
    the base rate, 0.713 on 122 validation items, always "yes", capping the teacher near its
    0.90 minimum.)"""

    seed: int = 1234
    test_size: int = 300
    validation_size: int = 500

    def question(self, rng: random.Random) -> VisualQuestion:
        kind = rng.randrange(4)
        count = 1 if kind < 3 else rng.randint(1, len(SHAPES))
        cells = rng.sample(sorted(PLACES), count)
        things = [Thing(shape, colour, cell) for shape, colour, cell in
                  zip(rng.sample(SHAPES, count), rng.sample(sorted(COLOURS), count), cells)]
        image = draw(things, rng)
        if kind == 0:
            return VisualQuestion(image, "What colour is the shape?", things[0].colour)
        if kind == 1:
            return VisualQuestion(image, "What shape is it?", things[0].shape)
        if kind == 2:
            return VisualQuestion(image, "Where is the shape?", PLACES[things[0].cell])
        return VisualQuestion(image, "How many shapes are there?", _NUMBERS[count])

    def test(self) -> list[VisualQuestion]:
        """The held-out split (its own random stream)."""
        rng = random.Random(f"{self.seed}:test")
        return [self.question(rng) for _ in range(self.test_size)]

    def validation(self) -> list[VisualQuestion]:
        """`validation_size` questions from a stream of their own: what a build watches to
        decide when to stop (the held-out split stays unseen until the end)."""
        rng = random.Random(f"{self.seed}:validation")
        return [self.question(rng) for _ in range(self.validation_size)]

    def train(self) -> Iterator[VisualQuestion]:
        """An endless stream of training questions, from a stream separate from the test one."""
        rng = random.Random(f"{self.seed}:train")
        while True:
            yield self.question(rng)


@dataclass(frozen=True)
class LabelledRecipe:
    """Single shapes labelled `"<colour> <shape>"` (twelve classes), for an image-encoder
    teacher with no `data_dir`: the same painter as the questions, streams of their own."""

    seed: int = 1234
    test_size: int = 240

    def item(self, rng: random.Random) -> LabelledImage:
        thing = Thing(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(PLACES)))
        return LabelledImage(draw([thing], rng), f"{thing.colour} {thing.shape}")

    def test(self) -> list[LabelledImage]:
        rng = random.Random(f"{self.seed}:labelled-test")
        return [self.item(rng) for _ in range(self.test_size)]

    def train(self) -> Iterator[LabelledImage]:
        rng = random.Random(f"{self.seed}:labelled-train")
        while True:
            yield self.item(rng)
