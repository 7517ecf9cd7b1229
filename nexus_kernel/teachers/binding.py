"""Each capability as it is distilled from its registered teacher (the `teacher_capability`
hook): the declared capability, or the owner's variant of it for that teacher's kind (an image
encoder's embedding instead of an image-to-text model's answers).

Stage 1 asks the hook once per teacher and records the variant's `output` and `benchmarks` with
the teacher in the registry; later stages rebuild the variant from that record, so nothing
reads a teacher's folder after stage 1 for it (stage 5 runs with the teachers removed)."""

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
    """`registry` with each entry's output and benchmarks those of its teacher's capability
    variant (a teacher class its plugin cannot serve raises the plugin's error here, before any
    build)."""
    entries = []
    for entry in registry.entries:
        variant = plugins.teacher_capability(entry.capability, entry.path)
        entries.append(replace(entry, output=variant.output, benchmarks=variant.benchmarks))
    return replace(registry, entries=tuple(entries))


def bound_capability(plugins: PluginSet, run_dir: Path, name: str) -> Capability:
    """Capability `name` as stage 1 bound it in `run_dir`: the declared capability with the
    output and benchmarks recorded for its teacher (unchanged when the run's registry names no
    teacher for it, or records no output, as registries before 0.3 did)."""
    declared = plugins.capabilities()[name][0]
    registry = run_dir / REGISTRY_FILE
    teachers = json.loads(registry.read_text())["teachers"] if registry.is_file() else []
    entry = next((entry for entry in teachers if entry["capability"] == name), None)
    if entry is None or not entry.get("output"):
        return declared
    return replace(declared, output=entry["output"], benchmarks=tuple(entry["benchmarks"]))
