"""Plain data passed through hooks. Torch-free so the plugin contract imports cheaply."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
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

    @classmethod
    def from_items(cls, benchmark: str, per_item: Sequence[float], chance: float) -> Score:
        """The mean of `per_item` (an empty list is an error: nothing was measured)."""
        if not per_item:
            raise ValueError(f"{benchmark}: no items were scored")
        values = tuple(float(value) for value in per_item)
        return cls(benchmark, sum(values) / len(values), len(values), chance, values)

    def to_json(self, with_items: bool = False) -> dict[str, Any]:
        described: dict[str, Any] = {
            "benchmark": self.benchmark, "value": self.value, "n": self.n, "chance": self.chance,
        }
        if with_items:
            described["per_item"] = list(self.per_item)
        return described


@dataclass(frozen=True)
class AdapterSpec:
    """What stage 3 decided for one capability's adapter; read back from `architecture.json`.

    `targets` maps each backbone `nn.Linear` that gets a rank-`rank` delta to its
    `(in_features, out_features)`;
    `anchored_layers` the student blocks whose output is anchored to the teacher's key
    layers; `output` is `text` (the backbone's LM head) or `embedding` (a head of
    `output_dim`); `input_projector` is the capability's modality when the student reads it
    through a projector (any modality but `text`; the owner's `build_adapter` supplies the
    projector), None for text, which the student reads as tokens.
    """

    capability: str
    rank: int
    hidden_size: int
    targets: Mapping[str, tuple[int, int]]
    anchored_layers: tuple[int, ...] = ()
    input_projector: str | None = None
    output: str = "text"
    output_dim: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "targets": {name: list(shape) for name, shape in self.targets.items()},
                "anchored_layers": list(self.anchored_layers)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AdapterSpec:
        return cls(**{**data, "targets": {name: (int(shape[0]), int(shape[1]))
                                          for name, shape in data["targets"].items()},
                      "anchored_layers": tuple(data["anchored_layers"])})


TOP_K = 16
"""Teacher tokens kept per position for the `kl` and `uld` objectives: the `k` of
`DistillPlan.teacher_distributions`."""


@dataclass(frozen=True)
class DistillPlan:
    """What a capability plugin gives stage 4 (hook `distill_capability`).

    `items()` starts a fresh, deterministic iteration over training items;
    `teacher_outputs(items)` is what the teacher answers (completion texts, or embedding
    rows as tensors); `teacher_batch(items, outputs)` and `teacher_forward(model, batch)` run
    the teacher on them (the kernel hooks its key layers there, as in profiling; `mask_of`
    marks real positions); `student_batch(items, outputs)` turns items and the teacher's
    answers into a `nexus_kernel.student.model.StudentBatch`.
    `objective` is `kl` (every teacher token is a student token: the student matches the
    teacher's next-token distribution on the completion, given by `teacher_distributions`),
    `uld` (no shared vocabulary needed: cross-entropy on the teacher's completion plus the distance
    between the teacher's and the student's sorted next-token probabilities, position by
    position, `nexus_kernel.algorithms.uld`), `sequence` (cross-entropy on the teacher's
    completions only) or `cosine` (embedding teachers). `reason` says why, for
    `distill_report.json` (e.g. "kl: every teacher token is a student token").

    `teacher_distributions(items, outputs)`, for `kl` and `uld`: per item, the teacher's `k`
    most likely token ids (`k` = `TOP_K`) and their log-probabilities, most likely first, as a
    pair of `(positions, k)` tensors. For `kl` the ids are the student's and the positions are
    the student batch's label positions, or the item is None when the two tokenize it
    differently (it is then trained with cross-entropy); for `uld` the ids and positions are
    the teacher's own (its completion tokens, end of sequence included).

    `for_objective(objective)`, optional: the same plan for another objective (what a
    `[capabilities.<name>] text_loss` override asks for), or None when it cannot give it.

    `augment(items, generator)`, optional: the training items of one step as the student reads
    them, e.g. a recording shifted and scaled, drawn with the `torch.Generator` given (seeded by
    the capability and the step, so a resumed run draws the same); the teacher's outputs and
    anchor targets stay those of the items as they are, so it returns one item per item and leaves
    any text the student reads unchanged (per-token anchors count its tokens). Only training
    steps are augmented.
    """

    items: Callable[[], Iterator[Any]]
    teacher_batch: Callable[[list[Any], list[Any]], Any]
    teacher_forward: Callable[[Any, Any], Any]
    teacher_outputs: Callable[[list[Any]], list[Any]]
    student_batch: Callable[[list[Any], list[Any]], Any]
    objective: str
    mask_of: Callable[[Any], Any] | None = None
    teacher_distributions: Callable[[list[Any], list[Any]], list[tuple[Any, Any] | None]] | None = None
    reason: str = ""
    for_objective: Callable[[str], DistillPlan | None] | None = None
    augment: Callable[[list[Any], Any], list[Any]] | None = None


@dataclass(frozen=True)
class ProbePlan:
    """What a capability plugin gives the profiling stage: probe batches and where to look.

    `batches` hold the `n_probe` samples used to rank layers by ablation; `stream(samples,
    batch_size)` yields fresh batches for the streaming PCA; `candidate_layers` are module
    names (as in `teacher.named_modules()`) that may be ablated and profiled; `loss(model,
    batch)` is the teacher's loss on its own task; `mask_of(batch)` marks real tokens
    (None: every position counts); `samples_of(batch)` counts the samples a batch holds (None:
    the rows of its first tensor; a multiple-choice batch has a row per option).
    """

    batches: Sequence[Any]
    candidate_layers: Sequence[str]
    loss: Callable[[Any, Any], Any]
    stream: Callable[[int, int], Iterator[Any]]
    mask_of: Callable[[Any], Any] | None = None
    samples_of: Callable[[Any], int] | None = None


@dataclass(frozen=True)
class DemoBuildResult:
    """What a demo build returns: the held-out scores (`benchmark -> Score`, on the test split
    the build never trained or validated on) and the training loop's record
    (e.g. `nexus_modalities.training.TrainingRecord.to_json()`: steps trained, each round's
    validation score, the target and whether it was reached)."""

    scores: Mapping[str, Score]
    training: Mapping[str, Any] = field(default_factory=dict)


DemoBuild = Callable[[Path, Mapping[str, Any], Callable[[int], None]], "DemoBuildResult | Mapping[str, Score]"]
"""`(folder, recipe, progress) -> DemoBuildResult`: trains the teacher the recipe describes
(until its validation score reaches `recipe["validation_target"]`, or the plan's step cap),
saves it into the (empty) `folder` with `save_pretrained`, and scores it on held-out items. A
build without validation may return the held-out scores alone."""


@dataclass(frozen=True)
class DemoTeacher:
    """A small teacher a capability plugin can train locally, so a run needs no download.

    `recipe` is everything that decides the weights (data seed, sizes, model shape, training
    plan, validation target); its hash keys the cache, so the same recipe is never trained
    twice. `build` must be a module-level function (it runs in a worker process). `steps` (the
    plan's cap) sizes the progress bar; `minimum` is the held-out score the build must reach
    on `benchmark`, else it fails. A build trains in rounds until its score on a validation
    split (never the held-out one) reaches `minimum + margin`, so a machine whose floats take
    another path trains longer rather than falling short. `seconds_per_step` (on one CPU core)
    and `expected_steps` (the first round) order the builds longest first, so two workers
    finish together; neither is part of the recipe.
    """

    name: str
    capability: str
    recipe: Mapping[str, Any]
    steps: int
    build: DemoBuild
    benchmark: str
    minimum: float
    seconds_per_step: float = 0.1
    expected_steps: int = 0

    @property
    def expected_seconds(self) -> float:
        return (self.expected_steps or self.steps) * self.seconds_per_step

    @property
    def validation_target(self) -> float | None:
        target = self.recipe.get("validation_target")
        return float(target) if target is not None else None

    @classmethod
    def of(cls, name: str, capability: str, build: DemoBuild, benchmark: str, plan: Any,
           minimum: float = 0.9, margin: float = 0.04, seed: int = 42, seconds_per_step: float = 0.1,
           **parts: Any) -> DemoTeacher:
        """A demo teacher whose recipe is `seed`, the training `plan` (a dataclass such as
        `nexus_modalities.training.TrainingPlan`: `steps` is the cap, `rounds()`, where it has
        one, gives the first round), the validation target `minimum + margin` and the named
        `parts` (dataclasses or mappings: data recipe, model shape, feature settings)."""
        recipe = {"seed": seed, "plan": _plain(plan), "validation_target": round(minimum + margin, 6),
                  **{key: _plain(value) for key, value in parts.items()}}
        first_round = plan.rounds()[0][1] if hasattr(plan, "rounds") else plan.steps
        return cls(name, capability, recipe, plan.steps, build, benchmark, minimum, seconds_per_step,
                   first_round)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return dict(value) if isinstance(value, Mapping) else value
