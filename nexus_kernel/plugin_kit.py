"""The hooks every capability plugin answers the same way, made from its declaration.

A capability package's `__init__.py` declares its `Capability` and binds the standard hooks:

    register_capabilities, resolve_datasets, demo_teacher = standard_hooks(
        CAPABILITY, synthetic="gsm8k-words-v1", teacher="nexus_cap_math.teacher")

`teacher` names a module with a `demo() -> DemoTeacher` function; it is imported only when a
demo teacher is asked for, so importing the plugin stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import DemoTeacher

hookimpl = pluggy.HookimplMarker("nexus")


def standard_hooks(capability: Capability, synthetic: str, teacher: str
                   ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """`register_capabilities`, `resolve_datasets` and `demo_teacher` for one capability whose
    data is its `data_dir` when configured, else the `synthetic` generator of that label."""

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
        return importlib.import_module(teacher).demo()

    return register_capabilities, resolve_datasets, demo_teacher
