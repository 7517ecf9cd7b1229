"""How a vision teacher is distilled and how either model is scored, by the teacher's kind.

- An image-to-text teacher: sequence-level distillation. The teacher answers each training
  question about its image; the student reads the image as patch tokens (the adapter's
  projector) followed by the question, and learns to write the teacher's answer (VQA accuracy).
- An image encoder (`images.ImageEncoder`): cosine distillation. The teacher embeds each
  training image at its processor's input size; the student reads the same image as its own
  32 px patches and its embedding head learns the teacher's embedding (centroid accuracy and
  cosine to the teacher, `nexus_modalities.embedding_capability`).
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
    resized,
)
from nexus_cap_vision.teacher import CHANNELS, VisionAnswerer, is_image_encoder, labelled_items, pixels
from nexus_kernel import Score
from nexus_kernel.contracts import AdapterSpec, DistillPlan

PATCH = 8
_BATCH = 64


def _items(datasets: Mapping[str, str], split: str) -> Any:
    from nexus_kernel.kit.datasets import split_items

    return split_items(datasets, split, SyntheticRecipe(), load_split)


def projector(spec: AdapterSpec) -> Any:
    """RGB and coordinate planes of the 32 px image, 8x8 patches, into the backbone (either kind)."""
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


def student_pixels(images: Sequence[np.ndarray]) -> Any:
    """What the student's projector reads of RGB images of any size: `pixels` at 32 px."""
    return pixels([resized(image, IMAGE_SIZE) for image in images])


def _is_embedding(model: Any) -> bool:
    """Whether a loaded teacher or a `StudentCapability` gives image embeddings (else answers)."""
    from nexus_kernel.student.model import StudentCapability

    if isinstance(model, StudentCapability):
        return bool(model.student.adapters[model.capability].spec.output == "embedding")
    return is_image_encoder(model.model)


def image_embeddings(model: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """Image embeddings `(n, dim)` of a loaded image-encoder teacher or a `StudentCapability`."""
    from nexus_cap_vision.images import ImageEncoder
    from nexus_kernel.student.model import StudentCapability
    from nexus_modalities.embedding_capability import student_embeddings

    if not isinstance(model, StudentCapability):
        return ImageEncoder.of(model.model, model.folder).embed(images)
    return student_embeddings(model, images, student_pixels, _BATCH)


def distill_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """The plan of the student's kind of vision adapter (its spec's output)."""
    from nexus_cap_vision import CAPABILITY

    if student.adapters[CAPABILITY.name].spec.output == "embedding":
        return _embedding_plan(teacher, student, datasets)
    return _answer_plan(teacher, student, datasets)


def _embedding_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
    """Train on training images against the image encoder's embeddings
    (`nexus_modalities.embedding_capability.embedding_distill_plan`)."""
    from nexus_cap_vision.images import ImageEncoder
    from nexus_modalities.embedding_capability import embedding_distill_plan

    return embedding_distill_plan(ImageEncoder.of(teacher.model, teacher.folder) if teacher is not None else None,
                                  lambda: iter(labelled_items(datasets, "train")), lambda item: item.image,
                                  student_pixels, "image embedding")


def _answer_plan(teacher: Any, student: Any, datasets: Mapping[str, str]) -> DistillPlan:
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
    """VQA exact match of an image-to-text teacher or its student on `split`; an image
    encoder's or its student's nearest-centroid accuracy and (given the teacher's embeddings
    of the same images, `reference`) cosine to the teacher."""
    if not _is_embedding(model):
        return benchmark.evaluate(answerer_of(model), list(_items(datasets, split))[:limit])
    from nexus_modalities.embedding_capability import scores

    items = list(labelled_items(datasets, split))[:limit]
    return scores(image_embeddings(model, [item.image for item in items]), [item.label for item in items],
                  reference, benchmark.CENTROID, benchmark.COSINE, "vision")


def reference(teacher: Any, split: str, datasets: Mapping[str, str], limit: int | None = None) -> dict[str, Any] | None:
    """An image encoder's embeddings of the images `score` reads (None for VQA teachers)."""
    from nexus_modalities.embedding_capability import reference_of

    if not is_image_encoder(teacher.model):
        return None
    items = list(labelled_items(datasets, split))[:limit]
    return reference_of(image_embeddings(teacher, [item.image for item in items]))


_CENTROID_ITEMS = 500


def assets(model: Any, datasets: Mapping[str, str]) -> dict[str, Any]:
    """An embedding student's unit-length centroid per label (the mean embedding of the first
    training images of that label, what `answer` compares a new image with); nothing for VQA."""
    import itertools

    from nexus_modalities.embedding_capability import centroid_assets

    if not _is_embedding(model):
        return {}
    items = list(itertools.islice(labelled_items(datasets, "train"), _CENTROID_ITEMS))
    return centroid_assets(image_embeddings(model, [item.image for item in items]), [item.label for item in items])


def answer(model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
    """The packaged student's reply about one image (PNG, JPEG, ...): for an embedding student
    the label of the nearest packaged centroid with its cosine (`inputs`: the image path), else
    its short answer (`inputs`: the image path and the question, e.g. `shapes.png "What colour
    is the shape?"`)."""
    from pathlib import Path

    from nexus_cap_vision.data import read_image
    from nexus_kernel.errors import NexusError
    from nexus_modalities.embedding_capability import nearest_centroid

    if _is_embedding(model):
        if len(inputs) != 1:
            raise NexusError("vision: this bundle embeds images; give one image path, e.g. "
                             "nexus infer BUNDLE --capability vision seven.png")
        return nearest_centroid(image_embeddings(model, [read_image(Path(inputs[0]), None)])[0], assets, "vision")
    if len(inputs) < 2:
        raise NexusError("vision: give an image path and a question, e.g. "
                         "nexus infer BUNDLE --capability vision picture.png \"What colour is the shape?\"")
    image = read_image(Path(inputs[0]))
    question = VisualQuestion(image=image, question=" ".join(inputs[1:]), answer="")
    return str(answerer_of(model).answer([image], [benchmark.prompt_of(question)], benchmark.MAX_ANSWER_TOKENS)[0]).strip()
