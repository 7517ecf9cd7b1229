"""The parts every embedding capability shares (voice, vision's image encoders): stage 2's probe
for a teacher without a task head, stage 4's cosine plan, the scores with the teacher's
reference embeddings, the packaged class centroids and the nearest-centroid answer.

An `encoder` here is a teacher behind `batch(raw_items) -> batch` (the model inputs; a batch has
`.size` and `.mask()`, the real positions at the encoder's output or None), `forward(batch)`
(the encoder's outputs, through the blocks the anchors hook), `pooled(batch) -> (n, hidden)`
float tensor (differentiable through the model), `embed(raw_items) -> (n, hidden)` array,
`candidate_layers() -> list[str]` and `describe() -> dict`; `.model` is the teacher module.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from nexus_kernel import Score
from nexus_kernel.contracts import DistillPlan, ProbePlan
from nexus_kernel.errors import NexusError
from nexus_modalities import embedding_scores

REFERENCE_KEY = "embeddings"
"""The key of the teacher's held-out embeddings in what `reference` records."""
CENTROID_PREFIX = "centroid."
"""Bundle assets `centroid.<label>`: one unit-length centroid per label."""


def embedding_probe_plan(encoder: Any, items: Callable[[], Iterable[Any]], raw: Callable[[Any], Any],
                         n_probe: int) -> ProbePlan:
    """A probe for a teacher without a task head: the probe batch is `(inputs, clean)`, `clean`
    the unablated embeddings of the first `n_probe` items, and the loss is `1 - cosine` to them;
    a streamed batch carries None there and its loss is only the forward pass the profiler
    hooks. `raw(item)` is what `encoder.batch` reads of an item (its waveform, its image)."""
    import torch

    def loss(model: Any, batch: tuple[Any, Any]) -> Any:
        assert model is encoder.model, "the probe runs on the teacher it was planned for"
        inputs, clean = batch
        embedding = encoder.pooled(inputs)
        if clean is None:
            return embedding.sum() * 0
        return (1 - torch.nn.functional.cosine_similarity(embedding, clean, dim=-1)).mean()

    def stream(samples: int, batch_size: int) -> Iterator[tuple[Any, Any]]:
        source = itertools.islice(items(), samples)
        while chunk := list(itertools.islice(source, batch_size)):
            yield encoder.batch([raw(item) for item in chunk]), None

    probe = encoder.batch([raw(item) for item in itertools.islice(items(), n_probe)])
    with torch.inference_mode():
        clean = encoder.pooled(probe)
    return ProbePlan(batches=[(probe, clean)], candidate_layers=encoder.candidate_layers(), loss=loss, stream=stream,
                     mask_of=lambda batch: batch[0].mask(), samples_of=lambda batch: batch[0].size)


def embed_all(encoder: Any, raw_items: Sequence[Any], batch_size: int, width: int) -> np.ndarray:
    """`(n, width)` float32 embeddings of `raw_items` by `encoder`, `batch_size` at a time, with
    no autograd."""
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, len(raw_items), batch_size):
            rows.append(encoder.pooled(encoder.batch(raw_items[start : start + batch_size])).numpy())
    return np.concatenate(rows) if rows else np.zeros((0, width), np.float32)


def student_embeddings(model: Any, raw_items: Sequence[Any], student_prefix: Callable[[Any], Any],
                       batch_size: int) -> np.ndarray:
    """`(n, dim)` embeddings of a `StudentCapability` (`model.student`, `model.capability`) for
    `raw_items`, read through `student_prefix` (what its projector takes) `batch_size` at a time."""
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, len(raw_items), batch_size):
            prefix = student_prefix(raw_items[start : start + batch_size])
            rows.append(model.student.embed(model.capability, prefix).numpy())
    return np.concatenate(rows)


def embedding_distill_plan(encoder: Any | None, items: Callable[[], Iterator[Any]], raw: Callable[[Any], Any],
                           student_prefix: Callable[[list[Any]], Any], what: str) -> DistillPlan:
    """Stage 4's cosine plan: the teacher (`encoder`, None when stage 4 asks only for the items)
    embeds each training item; the student reads `student_prefix(raw items)` through its
    projector and its embedding head learns the teacher's embedding; the anchors read the
    teacher's blocks on the same inputs (`encoder.batch`, `encoder.forward`). `what` names the
    embedding in the report's reason, e.g. "utterance embedding"."""
    import torch

    from nexus_kernel.student.model import StudentBatch

    def loaded() -> Any:
        assert encoder is not None, "the teacher is not loaded"
        return encoder

    def teacher_outputs(chunk: list[Any]) -> list[Any]:
        return list(torch.from_numpy(loaded().embed([raw(item) for item in chunk])))

    def teacher_batch(chunk: list[Any], _outputs: list[Any]) -> Any:
        return loaded().batch([raw(item) for item in chunk])

    def teacher_forward(model: Any, batch: Any) -> Any:
        assert model is loaded().model, "the teacher is not the one planned for"
        return loaded().forward(batch)

    def student_batch(chunk: list[Any], outputs: list[Any]) -> StudentBatch:
        return StudentBatch(prefix=student_prefix([raw(item) for item in chunk]), target=torch.stack(outputs).float())

    described = f" ({encoder.describe()})" if encoder is not None else ""
    return DistillPlan(items=items, teacher_batch=teacher_batch, teacher_forward=teacher_forward,
                       teacher_outputs=teacher_outputs, student_batch=student_batch, objective="cosine",
                       mask_of=lambda batch: batch.mask(),
                       reason=f"cosine: the student's embedding head matches the teacher's {what}{described}")


def scores(found: np.ndarray, labels: Sequence[str], reference: Mapping[str, Any] | None, centroid: str,
           cosine: str, capability: str) -> dict[str, Score]:
    """Leave-one-out nearest-centroid accuracy of the embeddings `found` (reference-free, so
    teacher and student are scored alike) as `centroid`, and given the teacher's embeddings of
    the same items (`reference`) their mean cosine similarity as `cosine`."""
    result = {centroid: embedding_scores.centroid_score(centroid, found, labels)}
    if reference is not None:
        teacher = reference[REFERENCE_KEY].numpy()
        if teacher.shape != found.shape:
            raise NexusError(f"{capability}: the teacher's reference embeddings {teacher.shape} do not match the "
                             f"{found.shape} scored now (rerun stage 4 with the same eval_samples)")
        result[cosine] = embedding_scores.cosine_score(cosine, found, teacher)
    return result


def reference_of(found: np.ndarray) -> dict[str, Any]:
    """What `reference` records: the teacher's embeddings of the items `score` reads."""
    import torch

    return {REFERENCE_KEY: torch.from_numpy(np.ascontiguousarray(found)).float()}


def centroid_assets(found: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """One unit-length centroid per label: the mean of the unit embeddings `found` of that
    label's items (what `nearest_centroid` compares a new item with)."""
    import torch

    unit = embedding_scores.unit_rows(found.astype(np.float64))
    return {f"{CENTROID_PREFIX}{label}": torch.from_numpy(embedding_scores.unit_rows(
                unit[[i for i, own in enumerate(labels) if own == label]].mean(axis=0, keepdims=True))[0]).float()
            for label in sorted(set(labels))}


def nearest_centroid(found: np.ndarray, assets: Mapping[str, Any], capability: str) -> str:
    """`<label> (cosine <similarity>)` of the packaged centroid nearest one embedding `found`."""
    centroids = {key[len(CENTROID_PREFIX):]: value.numpy() for key, value in assets.items()
                 if key.startswith(CENTROID_PREFIX)}
    if not centroids:
        raise NexusError(f"{capability}: the bundle holds no class centroids (package_assets did not run)")
    unit = embedding_scores.unit_rows(np.asarray(found, dtype=np.float64)[None, :])[0]
    similarity = {label: float(unit @ centroid) for label, centroid in centroids.items()}
    best = max(similarity, key=similarity.__getitem__)
    return f"{best} (cosine {similarity[best]:.3f})"
