"""The hooks a Nexus plugin may implement (pluggy project name `nexus`).

Hooks about one capability (every hook with a `capability` or `entry` argument) are called by
pluggy on a subset of the plugins: the one that owns the capability (whose
`register_capabilities` declared it) and the kernel's built-in defaults
(`nexus_kernel.defaults`, registered `trylast`), so the owner answers first and the default
only when the owner returns None; see `PluginSet.call_for`. A plugin therefore never has to
check whether a call is meant for it. These hooks are `firstresult`: the first answer that is
not None is the answer. Every hook returns `None` to mean "no answer".

Capability plugins normally do not write these functions themselves: an instance of
`nexus_kernel.CapabilityPlugin` implements them from the capability's declaration and its
teacher and student modules (see CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nexus_kernel.capability import Capability
    from nexus_kernel.contracts import (
        AdapterSpec,
        DemoTeacher,
        DistillPlan,
        ProbePlan,
        Score,
    )
    from nexus_kernel.teachers.registry import TeacherEntry

hookspec = pluggy.HookspecMarker("nexus")
hookimpl = pluggy.HookimplMarker("nexus")
"""Marker for hook implementations; re-exported as `nexus_kernel.hookimpl`."""


@hookspec
def register_capabilities() -> list[Capability]:
    """Declare the capabilities this plugin brings (name, modality, CSV categories, benchmarks,
    max rank, rank policy). Answered by every capability plugin; a capability claimed by two
    distributions is an error naming both.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def resolve_datasets(capability: Capability, settings: Mapping[str, Any]) -> dict[str, str] | None:
    """Name the datasets `capability` will read, split name to an absolute path or a
    `synthetic:<recipe>` label. `settings` is the capability's `[capabilities.<name>]` config
    table with defaults filled in. Called by stage 0, which records the answer in the lock.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def demo_teacher(capability: Capability, settings: Mapping[str, Any]) -> DemoTeacher | None:
    """The small teacher the owner can train locally for `capability` (its name is the CSV's
    `Model Name`), built by `nexus teachers build` or on first use by `nexus run` when that
    folder is missing. `settings` as for `resolve_datasets`.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def load_teacher(entry: TeacherEntry, quantization: str, device: str) -> Any | None:
    """Load the teacher described by a registry `entry`, quantized as asked (`nf4`, `int8`,
    `bf16`, `fp32`), onto `device` (`cpu`, `cuda`). The kernel's default answers for local
    Hugging Face folders with a `nexus_kernel.teachers.loading.LoadedTeacher`; a plugin answers
    for its own formats.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 `device` is passed.
    """


@hookspec(firstresult=True)
def teacher_capability(capability: Capability, folder: str) -> Capability | None:
    """`capability` as it is distilled from the teacher in `folder` (its `config.json` may be
    read; no weights are loaded, and the folder may not exist yet for a demo teacher still to
    be built). None keeps the declared capability. A plugin whose teachers come in kinds with
    different outputs (an image encoder gives an embedding, an image-to-text model text)
    answers with a variant of its declaration (`dataclasses.replace`) that differs only in
    `output` and `benchmarks`; anything else changed is a `PluginError`. A teacher class the
    plugin cannot serve raises a `NexusError` naming the class and the supported ones. Stage 1
    asks once per teacher and records the variant's output and benchmarks with it; stages 2 to
    6 use the variant rebuilt from that record (no teacher file is read after stage 1), and
    `build_adapter` and `answer` get the capability with the adapter's output.

    .. versionadded:: 0.3
    """


@hookspec(firstresult=True)
def profile_capability(
    capability: Capability, teacher: Any, n_probe: int, datasets: Mapping[str, str],
) -> ProbePlan | None:
    """Give stage 2 `n_probe` probe samples in batches, a stream of further samples, the
    teacher's candidate layers and its loss. `teacher` is a `LoadedTeacher` (name, folder,
    model, quantization); `datasets` is the capability's locked split-to-source map. The
    kernel does the hooking, ablation and streaming PCA.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def build_adapter(capability: Capability, spec: AdapterSpec) -> nn.Module | None:
    """Build the adapter for `capability` as stage 3 specified it: a
    `nexus_kernel.student.model.CapabilityAdapter` with low-rank deltas on `spec.target_modules`
    plus the input projector its modality needs. The kernel answers for text capabilities
    (no projector); a capability of any other modality (`spec.input_projector` is its
    modality) must answer with an adapter that has a projector, else stage 3 stops with an
    error naming the capability, the modality and the plugin.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def distill_capability(
    capability: Capability, teacher: Any, student: Any, datasets: Mapping[str, str],
) -> DistillPlan | None:
    """Give stage 4 a `DistillPlan`: training items, how to run the teacher on them and read
    its answers, and how to turn both into student batches. `teacher` is a `LoadedTeacher`,
    `student` the `NexusStudent` (its tokenizer is `student.tokenizer`).

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def anchor_loss(
    capability: Capability,
    student_hidden: torch.Tensor,
    teacher_coefficients: torch.Tensor,
    eigenvalues: torch.Tensor,
) -> torch.Tensor | None:
    """The activation-anchor loss between the student's projected hidden state `(batch,
    rank)` and the teacher's whitened PCA coefficients `(batch, rank)`. The kernel gives the
    default (mean squared error); an owner may override it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def retention_metric(
    capability: Capability, model: Any, split: str, datasets: Mapping[str, str], limit: int | None,
    reference: Mapping[str, torch.Tensor] | None,
) -> dict[str, Score] | None:
    """Score `model` on the first `limit` items (all when None) of `split` of the capability's
    benchmark, with the same scorer, items and prompts for teacher and student. `model` is a
    `LoadedTeacher` or a `nexus_kernel.student.model.StudentCapability`. `reference` is what
    `reference_outputs` recorded from the teacher on the same items (None when the owner
    records nothing), so a benchmark can compare the model with its teacher. Keys are
    benchmark names; retention is judged on the capability's first declared benchmark
    (`Capability.benchmarks[0]`), which must be present, whatever order the scores come in.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 `reference` is passed.
    """


@hookspec(firstresult=True)
def reference_outputs(
    capability: Capability, teacher: Any, split: str, datasets: Mapping[str, str], limit: int | None,
) -> dict[str, torch.Tensor] | None:
    """The teacher's outputs on the same held-out items `retention_metric` scores (e.g. its
    embeddings), as named tensors. Stage 4 asks while the teacher is loaded and stores them
    beside its pool; every later `retention_metric` call gets them back as `reference`. None:
    the benchmark needs nothing from the teacher.

    .. versionadded:: 0.2
    """


@hookspec(firstresult=True)
def quantize(module: nn.Module, scheme: str) -> nn.Module | None:
    """Quantize `module` with `scheme` (`nf4`, `int8`) for packaging, or return None when this
    plugin cannot on the current device (the next plugin, then the kernel fallback, is asked).
    Not tied to a capability: the first answer wins.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def package_assets(capability: Capability, model: Any, datasets: Mapping[str, str]) -> dict[str, torch.Tensor] | None:
    """Tensors the packaged capability needs at inference besides its weights (e.g. class
    centroids of an embedding capability, computed with the quantized student `model`, a
    `StudentCapability`, on the training split). Stage 6 stores them in the bundle; `answer`
    gets them back. None: nothing extra.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def answer(capability: Capability, model: Any, inputs: list[str], assets: Mapping[str, torch.Tensor]) -> str | None:
    """Answer one query with the packaged student (`model`, a `StudentCapability`): `inputs`
    are the user's arguments to `nexus infer` (text, or a file path first for images and audio,
    then any text); `assets` what `package_assets` stored. Bad input raises `NexusError` naming it.

    .. versionadded:: 0.1
    """


def hook_names() -> list[str]:
    """Names of every hook above, in definition order."""
    return [name for name, value in globals().items() if hasattr(value, "nexus_spec")]
