"""Each capability as it is distilled from its registered teacher (the `teacher_capability`
hook): the declared capability, or the owner's variant of it for that teacher's kind (an image
encoder's embedding instead of an image-to-text model's answers)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nexus_kernel.run.layout import REGISTRY_FILE

if TYPE_CHECKING:
    from nexus_kernel.capability import Capability
    from nexus_kernel.plugins import PluginSet
    from nexus_kernel.teachers.registry import TeacherRegistry


def bind_teacher_capabilities(registry: TeacherRegistry, plugins: PluginSet) -> TeacherRegistry:
    """`registry` with each entry's benchmarks those of its teacher's capability variant (a
    teacher class its plugin cannot serve raises the plugin's error here, before any build)."""
    entries = tuple(replace(entry, benchmarks=plugins.teacher_capability(entry.capability, entry.path).benchmarks)
                    for entry in registry.entries)
    return replace(registry, entries=entries)


def bound_capability(plugins: PluginSet, run_dir: Path, name: str) -> Capability:
    """Capability `name` as stage 1 bound it in `run_dir`: the variant for its registered
    teacher, or the declared capability when the run's registry names no teacher for it."""
    registry = run_dir / REGISTRY_FILE
    teachers = json.loads(registry.read_text())["teachers"] if registry.is_file() else []
    folder = next((entry["path"] for entry in teachers if entry["capability"] == name), None)
    if folder is None:
        return plugins.capabilities()[name][0]
    return plugins.teacher_capability(name, folder)
