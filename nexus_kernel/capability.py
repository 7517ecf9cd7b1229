"""What a capability plugin declares about itself. Importing this module never imports torch."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

TEXT = "text"
"""The one modality the student reads without a projector: as tokens of its own tokenizer."""
OUTPUTS = ("text", "embedding")
DEFAULT_MAX_RANK = 64
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

RankPolicy = Callable[[int, int], int]
"""`(intrinsic_dim, max_rank) -> rank`; the kernel clamps the answer to `[1, max_rank]`."""


@dataclass(frozen=True)
class Capability:
    """One capability a plugin brings: the student gets exactly one adapter for it.

    `modality` is what the student reads for it, any lower-case identifier (`text`, `image`,
    `audio`, `video`, ...). `text` is read as tokens, with no projector; every other modality
    is read through an input projector, which the owning plugin's `build_adapter` must supply
    (the kernel has none of its own, and stage 3 stops with an error naming the capability,
    its modality and its plugin when the adapter has none).
    `categories` are the values of the teacher CSV's `Category` column this capability serves
    (matched case-insensitively); `benchmarks` name the scores its `retention_metric` reports,
    the headline (the one retention is judged on) first. `output` is what the student gives
    for it: `text` (through the backbone's LM head) or `embedding` (a vector the size of the
    teacher's hidden state). `alpha_scale` multiplies the run's anchor weight `distill.alpha`
    for this capability (a config's `capabilities.<name>.alpha_scale` overrides it);
    `pool_scale` likewise multiplies `distill.pool_size`, the training items its teacher answers
    (a capability that overfits a small pool asks for more).
    """

    name: str
    modality: str
    categories: tuple[str, ...]
    benchmarks: tuple[str, ...]
    max_rank: int = DEFAULT_MAX_RANK
    description: str = ""
    output: str = "text"
    alpha_scale: float = 1.0
    pool_scale: float = 1.0
    rank_policy: RankPolicy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"capability name {self.name!r} must be lower-case letters, digits and '_'"
            )
        if not isinstance(self.modality, str) or not _NAME_PATTERN.match(self.modality):
            raise ValueError(
                f"capability {self.name!r}: modality {self.modality!r} must be a lower-case "
                "identifier (letters, digits and '_', starting with a letter), e.g. 'text' or 'image'"
            )
        if self.output not in OUTPUTS:
            raise ValueError(
                f"capability {self.name!r}: output {self.output!r} is not one of {OUTPUTS}"
            )
        if not self.categories:
            raise ValueError(f"capability {self.name!r} serves no CSV category")
        if not self.benchmarks:
            raise ValueError(f"capability {self.name!r} names no benchmark")
        if self.alpha_scale < 0:
            raise ValueError(f"capability {self.name!r}: alpha_scale must be >= 0")
        if self.pool_scale <= 0:
            raise ValueError(f"capability {self.name!r}: pool_scale must be > 0")
        if self.max_rank < 1:
            raise ValueError(f"capability {self.name!r}: max_rank must be >= 1")

    @property
    def input_projector(self) -> str | None:
        """What `AdapterSpec.input_projector` records: the modality, or None for text."""
        return None if self.modality == TEXT else self.modality

    def serves(self, category: str) -> bool:
        """Whether a teacher CSV row with this `Category` belongs to this capability."""
        wanted = category.strip().casefold()
        return any(wanted == own.casefold() for own in self.categories)

    def choose_rank(self, intrinsic_dim: int, max_rank: int | None = None) -> int:
        """`min(intrinsic_dim, max_rank)`, lowered (never raised) by the plugin's rank policy."""
        ceiling = self.max_rank if max_rank is None else max_rank
        rank = max(1, min(intrinsic_dim, ceiling))
        if self.rank_policy is not None:
            rank = max(1, min(self.rank_policy(intrinsic_dim, ceiling), rank))
        return rank

    def describe(self) -> dict[str, object]:
        """JSON-ready summary, as `nexus plugins --json` and the config lock record it."""
        return {
            "name": self.name,
            "modality": self.modality,
            "categories": list(self.categories),
            "benchmarks": list(self.benchmarks),
            "max_rank": self.max_rank,
            "output": self.output,
            "alpha_scale": self.alpha_scale,
            "pool_scale": self.pool_scale,
            "description": self.description,
        }


@dataclass(frozen=True)
class UnselectedCapabilities:
    """What the installed plugins outside the selection declare.

    `capabilities` pairs each declared `Capability` with the distribution declaring it;
    `unreadable` pairs each distribution whose declaration could not be read with the reason.
    """

    capabilities: tuple[tuple[Capability, str], ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()
