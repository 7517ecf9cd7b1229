"""The hooks every capability plugin answers the same way, made from its declaration.

A capability package's `__init__.py` declares its `Capability` and binds the standard hooks:

    (register_capabilities, resolve_datasets, demo_teacher, profile_capability, build_adapter,
     distill_capability, retention_metric, package_assets, answer) = standard_hooks(
        CAPABILITY, synthetic="gsm8k-words-v1", teacher="nexus_cap_math.teacher",
        student="nexus_cap_math.student")

`teacher` names a module with `demo() -> DemoTeacher` and `probe_plan(teacher, n_probe,
datasets) -> ProbePlan`; `student` a module with `distill_plan(teacher, student, datasets) ->
DistillPlan`, `score(model, split, datasets, limit) -> dict[str, Score]`, `answer(model, inputs, assets) -> str`
(what `nexus infer` prints), for image and audio capabilities `projector(spec) -> nn.Module`, and
optionally `assets(model, datasets) -> dict[str, Tensor]` (inference-time tensors stored in the
bundle). Both are imported only when a hook needs
them, so importing the plugin stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import (
    AdapterSpec,
    DemoTeacher,
    DistillPlan,
    ProbePlan,
    Score,
)

hookimpl = pluggy.HookimplMarker("nexus")


def standard_hooks(capability: Capability, synthetic: str, teacher: str, student: str
                   ) -> tuple[Callable[..., Any], ...]:
    """The nine hooks of one capability whose data is its `data_dir` when configured, else the
    `synthetic` generator of that label (see the module docstring for the two modules)."""
    module = teacher  # the hooks below take arguments named `teacher` and `student` too
    student_module = student

    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [capability]

    @hookimpl
    def resolve_datasets(capability: Capability, settings: Mapping[str, Any]) -> dict[str, str]:
        from nexus_kernel.kit.datasets import resolve_source

        source = resolve_source(settings, synthetic)
        return {"train": source, "test": source}

    @hookimpl
    def demo_teacher(capability: Capability, settings: Mapping[str, Any]) -> DemoTeacher:
        return importlib.import_module(module).demo()

    @hookimpl
    def profile_capability(capability: Capability, teacher: Any, n_probe: int,
                           datasets: Mapping[str, str]) -> ProbePlan:
        return importlib.import_module(module).probe_plan(teacher, n_probe, datasets)

    @hookimpl
    def build_adapter(capability: Capability, spec: AdapterSpec) -> Any:
        from nexus_kernel.student.model import CapabilityAdapter

        make_projector = getattr(importlib.import_module(student_module), "projector", None)
        return CapabilityAdapter(spec, make_projector(spec) if make_projector is not None else None)

    @hookimpl
    def distill_capability(capability: Capability, teacher: Any, student: Any,
                           datasets: Mapping[str, str]) -> DistillPlan:
        return importlib.import_module(student_module).distill_plan(teacher, student, datasets)

    @hookimpl
    def retention_metric(capability: Capability, model: Any, split: str, datasets: Mapping[str, str],
                         limit: int | None) -> dict[str, Score]:
        return importlib.import_module(student_module).score(model, split, datasets, limit)

    @hookimpl
    def package_assets(capability: Capability, model: Any, datasets: Mapping[str, str]) -> Any:
        make_assets = getattr(importlib.import_module(student_module), "assets", None)
        return make_assets(model, datasets) if make_assets is not None else None

    @hookimpl
    def answer(capability: Capability, model: Any, inputs: list[str], assets: Mapping[str, Any]) -> str:
        return importlib.import_module(student_module).answer(model, inputs, assets)  # type: ignore[no-any-return]

    return (register_capabilities, resolve_datasets, demo_teacher, profile_capability, build_adapter,
            distill_capability, retention_metric, package_assets, answer)
