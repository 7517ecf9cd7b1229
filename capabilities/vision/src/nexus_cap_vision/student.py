"""How the vision teacher is distilled and how either model is scored.

Sequence-level distillation: the teacher answers each training question about its image; the
student reads the image as patch tokens (the adapter's projector) followed by the question,
and learns to write the teacher's answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nexus_cap_vision import benchmark
from nexus_cap_vision.data import (
    IMAGE_SIZE,
    SyntheticRecipe,
    VisualQuestion,
    load_split,
)
from nexus_cap_vision.teacher import CHANNELS, VisionAnswerer, pixels
from nexus_kernel import Score
from nexus_kernel.contracts import AdapterSpec, DistillPlan

PATCH = 8
_BATCH = 64


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_split)


def projector(spec: AdapterSpec) -> Any:
    """RGB and coordinate planes, 8x8 patches, into the backbone."""
    from nexus_modalities.image_patches import PatchProjector

    return PatchProjector(CHANNELS, PATCH, IMAGE_SIZE, spec.hidden_size)


class StudentAnswerer:
    """The student's vision capability behind `answer(images, prompts, max_new_tokens)`."""

    def __init__(self, student: Any, capability: str) -> None:
        self.student = student
        self.capability = capability

    def answer(self, images: Sequence[np.ndarray], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        from nexus_kernel.student.decoding import complete, recomputing

        answers: list[str] = []
        for start in range(0, len(prompts), _BATCH):
            prefix = pixels(images[start : start + _BATCH])

            def logits_of(ids: Any, mask: Any, positions: Any, prefix: Any = prefix) -> Any:
                return self.student.text_logits(self.capability, ids, mask, positions, prefix=prefix)

            answers += complete(recomputing(logits_of), self.student.tokenizer, prompts[start : start + _BATCH], max_new_tokens)
        return answers


def answerer_of(model: Any) -> Any:
    """A loaded teacher or a `StudentCapability`, behind `answer(...)`."""
    from transformers import AutoTokenizer

    from nexus_kernel.student.model import StudentCapability

    if isinstance(model, StudentCapability):
        return StudentAnswerer(model.student, model.capability)
    return VisionAnswerer(model.model, AutoTokenizer.from_pretrained(model.folder))


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """Train on training questions (synthetic or a real folder) against the teacher's answers;
    the anchors read the teacher's encoder and decoder blocks on the same image and answer."""
    from nexus_kernel.student.decoding import completion_batch
    from nexus_kernel.student.model import StudentBatch

    answerer = answerer_of(teacher) if teacher is not None else None

    def pairs(chunk: list[VisualQuestion], outputs: list[str]) -> list[tuple[str, str]]:
        return [(benchmark.prompt_of(q), answer) for q, answer in zip(chunk, outputs, strict=True)]

    def teacher_outputs(chunk: list[VisualQuestion]) -> list[str]:
        assert answerer is not None, "the teacher is not loaded"
        return answerer.answer([q.image for q in chunk], [benchmark.prompt_of(q) for q in chunk],
                               benchmark.MAX_ANSWER_TOKENS)

    def teacher_batch(chunk: list[VisualQuestion], outputs: list[str]) -> Any:
        assert answerer is not None, "the teacher is not loaded"
        return pixels([q.image for q in chunk]), *completion_batch(answerer.tokenizer, pairs(chunk, outputs))

    def teacher_forward(model: Any, batch: Any) -> Any:
        images, input_ids, mask, _ = batch
        return model(pixel_values=images, decoder_input_ids=input_ids, decoder_attention_mask=mask)

    def student_batch(chunk: list[VisualQuestion], outputs: list[str]) -> StudentBatch:
        input_ids, mask, labels = completion_batch(student.tokenizer, pairs(chunk, outputs))
        return StudentBatch(prefix=pixels([q.image for q in chunk]), input_ids=input_ids, attention_mask=mask,
                            labels=labels)

    return DistillPlan(items=lambda: iter(_items(datasets, "train")), teacher_batch=teacher_batch,
                       teacher_forward=teacher_forward, teacher_outputs=teacher_outputs,
                       student_batch=student_batch, objective="sequence", mask_of=lambda batch: batch[2])


def score(model: Any, split: str, datasets: Mapping[str, str], limit: int | None = None,
          reference: Mapping[str, Any] | None = None) -> dict[str, Score]:
    """VQA exact match of a teacher or student on `split`."""
    questions = list(_items(datasets, split))[:limit]
    return benchmark.evaluate(answerer_of(model), questions)


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The packaged student's short answer about one image: `inputs` are the image path
    (PNG, JPEG, ...) and the question, e.g. `shapes.png "What colour is the shape?"`."""
    from pathlib import Path

    from nexus_cap_vision.data import read_image
    from nexus_kernel.errors import NexusError

    if len(inputs) < 2:
        raise NexusError("vision: give an image path and a question, e.g. "
                         "nexus infer BUNDLE --capability vision picture.png \"What colour is the shape?\"")
    image = read_image(Path(inputs[0]))
    question = VisualQuestion(image=image, question=" ".join(inputs[1:]), answer="")
    return str(answerer_of(model).answer([image], [benchmark.prompt_of(question)], benchmark.MAX_ANSWER_TOKENS)[0]).strip()
