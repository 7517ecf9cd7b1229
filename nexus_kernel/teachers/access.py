"""A stage's way to a teacher: through the `load_teacher` hook, on the run's device."""

from __future__ import annotations

import json

from nexus_kernel.run.layout import ENV_FILE
from nexus_kernel.run.runner import RunContext
from nexus_kernel.teachers.loading import LoadedTeacher, TeacherLoadError
from nexus_kernel.teachers.registry import TeacherEntry


def run_device(context: RunContext) -> str:
    """The device stage -1 chose for this run (`cpu` when it recorded none); under torchrun on
    CUDA, this rank's own GPU (`cuda:<LOCAL_RANK>`)."""
    from nexus_kernel.run.distributed import world

    env = json.loads((context.run_dir / ENV_FILE).read_text())
    device = str(env.get("device", "cpu"))
    here = world()
    return f"cuda:{here.local_rank}" if device == "cuda" and here.active else device


def load_teacher(context: RunContext, entry: TeacherEntry, preferred: str, device: str) -> LoadedTeacher:
    """The owner's `load_teacher` answer, else the kernel default's (`load_teacher_folder`)."""
    answer = context.plugins.call_for(entry.capability, "load_teacher", entry=entry, quantization=preferred,
                                      device=device)
    if answer is None:
        raise TeacherLoadError(f"teacher {entry.name!r}: no plugin loads it (row {entry.row} of the registry)")
    return answer  # type: ignore[no-any-return]


class TeacherSession:
    """One stage's teachers, each loaded once however many capabilities it serves, and one in
    memory at a time: `get` keeps the last teacher while the same folder, owner, precision and
    device are asked for, and frees it before loading another. A stage that visits the
    capabilities of one teacher together (`by_teacher`) loads each teacher once. Use it as a
    context manager so the last teacher is freed when the stage is done."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.loads = 0
        self._key: tuple[str, ...] | None = None
        self._teacher: LoadedTeacher | None = None

    def get(self, entry: TeacherEntry, preferred: str, device: str) -> LoadedTeacher:
        owner = self.context.plugins.capabilities()[entry.capability][1].distribution
        key = (str(entry.path), entry.name, owner, preferred, device)
        if self._teacher is None or key != self._key:
            self.release()
            self._teacher = load_teacher(self.context, entry, preferred, device)
            self._key = key
            self.loads += 1
        return self._teacher

    def release(self) -> None:
        import gc

        held = self._teacher is not None
        self._teacher, self._key = None, None
        if held:  # a model's reference cycles hold its weights until a collection (0.25 s each)
            gc.collect()

    def __enter__(self) -> TeacherSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def by_teacher(entries: dict[str, TeacherEntry]) -> list[str]:
    """Capability names, those served by one teacher folder next to each other (then by name)."""
    return sorted(entries, key=lambda name: (str(entries[name].path), name))
