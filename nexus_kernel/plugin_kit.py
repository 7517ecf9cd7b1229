"""The hooks every capability plugin answers the same way, made from its declaration.

A capability package's `__init__.py` declares its `Capability` and binds the standard hooks:

    register_capabilities, resolve_datasets, demo_teacher, profile_capability = standard_hooks(
        CAPABILITY, synthetic="gsm8k-words-v1", teacher="nexus_cap_math.teacher")

`teacher` names a module with `demo() -> DemoTeacher` and `probe_plan(teacher, n_probe,
datasets) -> ProbePlan`; it is imported only when one of them is asked for, so importing the
plugin stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import DemoTeacher, ProbePlan

hookimpl = pluggy.HookimplMarker("nexus")


def standard_hooks(capability: Capability, synthetic: str, teacher: str
                   ) -> tuple[Callable[..., Any], ...]:
    """`register_capabilities`, `resolve_datasets`, `demo_teacher` and `profile_capability` for
    one capability whose data is its `data_dir` when configured, else the `synthetic` generator
    of that label. The `teacher` module answers `demo()` and `probe_plan(teacher, n_probe,
    datasets)`."""
    module = teacher  # the hooks below take an argument named `teacher` too

    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [capability]

    @hookimpl
    def resolve_datasets(capability: Capability, settings: Mapping[str, Any]) -> dict[str, str]:
        from nexus_kernel.datasets import resolve_source

        source = resolve_source(settings, synthetic)
        return {"train": source, "test": source}

    @hookimpl
    def demo_teacher(capability: Capability, settings: Mapping[str, Any]) -> DemoTeacher:
        return importlib.import_module(module).demo()

    @hookimpl
    def profile_capability(capability: Capability, teacher: Any, n_probe: int,
                           datasets: Mapping[str, str]) -> ProbePlan:
        return importlib.import_module(module).probe_plan(teacher, n_probe, datasets)

    return register_capabilities, resolve_datasets, demo_teacher, profile_capability
