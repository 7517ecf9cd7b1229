"""Plain data passed through hooks. Torch-free so the plugin contract imports cheaply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Score:
    """A benchmark result, the same shape for a teacher and its student.

    `chance` is the score of a model that guesses; retention is "not measurable" when the
    teacher is at or near it. `per_item` holds one entry per scored item (e.g. correct or not,
    or a similarity) so intervals can be bootstrapped.
    """

    benchmark: str
    value: float
    n: int
    chance: float
    per_item: Sequence[float] = field(default_factory=tuple)


@dataclass(frozen=True)
class AdapterSpec:
    """What stage 3 decided for one capability's adapter; read from `architecture.json`."""

    capability: str
    rank: int
    hidden_size: int
    target_layers: tuple[int, ...]
    input_projector: str | None = None


@dataclass(frozen=True)
class ProbePlan:
    """What a capability plugin gives the profiling stage: probe batches and where to look.

    `batches` are ready-to-forward inputs for the teacher; `candidate_layers` are module names
    (as in `teacher.named_modules()`) that the kernel may ablate and profile.
    """

    batches: Sequence[Any]
    candidate_layers: Sequence[str]
