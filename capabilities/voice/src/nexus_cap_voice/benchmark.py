"""Voice scoring, one scorer for teacher and student.

The headline, `voice centroid accuracy`, asks whether the embeddings separate the words: each
utterance is assigned the label of the nearest class centroid, computed leave-one-out from the
other utterances. The second figure, `voice cosine`, is the mean cosine similarity between the
model's utterance embedding and the teacher's for the same utterance (a teacher scores 1.0
against itself); it needs the teacher's embeddings, so it is reported where they are at hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nexus_kernel import Score

COSINE = "voice cosine"
CENTROID = "voice centroid accuracy"


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero)."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def cosine_score(embeddings: np.ndarray, reference: np.ndarray) -> Score:
    """Mean per-utterance cosine similarity of `embeddings` to the teacher's `reference`."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"embeddings {embeddings.shape} and teacher embeddings {reference.shape} differ in shape")
    per_item = (unit_rows(embeddings.astype(np.float64)) * unit_rows(reference.astype(np.float64))).sum(axis=1)
    return Score.from_items(COSINE, per_item.tolist(), 0.0)


def centroid_score(embeddings: np.ndarray, labels: Sequence[str]) -> Score:
    """Leave-one-out nearest-centroid accuracy (cosine) of `embeddings` against `labels`."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError("nearest-centroid accuracy needs at least two labels")
    index = np.array([classes.index(label) for label in labels])
    unit = unit_rows(embeddings.astype(np.float64))
    sums = np.stack([unit[index == c].sum(axis=0) for c in range(len(classes))])
    counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
    correct = []
    for row, own in enumerate(index):
        centroids = sums.copy()
        centroids[own] -= unit[row]
        sizes = counts.copy()
        sizes[own] -= 1
        usable = sizes > 0
        similarity = np.where(usable, unit_rows(centroids / np.maximum(sizes, 1)[:, None]) @ unit[row], -np.inf)
        correct.append(float(int(np.argmax(similarity)) == own))
    return Score.from_items(CENTROID, correct, 1 / len(classes))


def score(embeddings: np.ndarray, labels: Sequence[str], reference: np.ndarray | None = None
          ) -> dict[str, Score]:
    """Both figures; without a `reference` the model is the teacher and is its own reference."""
    return {COSINE: cosine_score(embeddings, embeddings if reference is None else reference),
            CENTROID: centroid_score(embeddings, labels)}
