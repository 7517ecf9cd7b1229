"""A stage's way to a teacher: through the `load_teacher` hook, on the run's device."""

from __future__ import annotations

import json

from nexus_kernel.run.layout import ENV_FILE
from nexus_kernel.run.runner import RunContext
from nexus_kernel.teachers.loading import LoadedTeacher, TeacherLoadError
from nexus_kernel.teachers.registry import TeacherEntry


def run_device(context: RunContext) -> str:
    """The device stage -1 chose for this run (`cpu` when it recorded none)."""
    env = json.loads((context.run_dir / ENV_FILE).read_text())
    return str(env.get("device", "cpu"))


def load_teacher(context: RunContext, entry: TeacherEntry, preferred: str, device: str) -> LoadedTeacher:
    """The owner's `load_teacher` answer, else the kernel default's (`load_teacher_folder`)."""
    answer = context.plugins.call_for(entry.capability, "load_teacher", entry=entry, quantization=preferred,
                                      device=device)
    if answer is None:
        raise TeacherLoadError(f"teacher {entry.name!r}: no plugin loads it (row {entry.row} of the registry)")
    return answer  # type: ignore[no-any-return]
