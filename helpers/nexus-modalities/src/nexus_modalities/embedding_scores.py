"""Scores for embedding capabilities, the same scorer for teacher and student.

`centroid_score` asks whether the embeddings separate labelled classes (leave-one-out
nearest-centroid accuracy, reference-free); `cosine_score` compares a model's embeddings with
the teacher's of the same items (the `reference` a plugin records in stage 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nexus_kernel import Score


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero)."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def cosine_score(benchmark: str, embeddings: np.ndarray, reference: np.ndarray) -> Score:
    """Mean per-item cosine similarity of `embeddings` to the teacher's `reference` (chance 0)."""
    if embeddings.shape != reference.shape:
        raise ValueError(f"embeddings {embeddings.shape} and teacher embeddings {reference.shape} differ in shape")
    per_item = (unit_rows(embeddings.astype(np.float64)) * unit_rows(reference.astype(np.float64))).sum(axis=1)
    return Score.from_items(benchmark, per_item.tolist(), 0.0)


def centroid_score(benchmark: str, embeddings: np.ndarray, labels: Sequence[str]) -> Score:
    """Leave-one-out nearest-centroid accuracy (cosine) of `embeddings` against `labels`;
    chance is one over the number of classes."""
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
    return Score.from_items(benchmark, correct, 1 / len(classes))
