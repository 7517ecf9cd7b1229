"""Voice scoring, one scorer for teacher and student.

The headline, `voice centroid accuracy`, asks whether the embeddings separate the words: each
utterance is assigned the label of the nearest class centroid, computed leave-one-out from the
other utterances. The second figure, `voice cosine`, is the mean cosine similarity between the
model's utterance embedding and the teacher's for the same utterance (a teacher scores 1.0
against itself); it needs the teacher's embeddings, which stage 4 records while the teacher is
loaded (`student.reference`), so the student's figure is reported in stages 4 to 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nexus_kernel import Score
from nexus_modalities import embedding_scores

COSINE = "voice cosine"
CENTROID = "voice centroid accuracy"


unit_rows = embedding_scores.unit_rows


def cosine_score(embeddings: np.ndarray, reference: np.ndarray) -> Score:
    """Mean per-utterance cosine similarity of `embeddings` to the teacher's `reference`."""
    return embedding_scores.cosine_score(COSINE, embeddings, reference)


def centroid_score(embeddings: np.ndarray, labels: Sequence[str]) -> Score:
    """Leave-one-out nearest-centroid accuracy (cosine) of `embeddings` against `labels`."""
    return embedding_scores.centroid_score(CENTROID, embeddings, labels)


def score(embeddings: np.ndarray, labels: Sequence[str], reference: np.ndarray | None = None
          ) -> dict[str, Score]:
    """Both figures; without a `reference` the model is the teacher and is its own reference."""
    return {COSINE: cosine_score(embeddings, embeddings if reference is None else reference),
            CENTROID: centroid_score(embeddings, labels)}
