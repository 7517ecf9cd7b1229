"""A guard for the teacher-removal check: in the process that evaluates the student, opening
or listing anything under the teachers' folders fails loudly with the path it wanted.

`forbid_reads(roots)` installs a `sys.addaudithook` hook (it cannot be removed, so install it
only in a process made for the check) that raises `TeacherAccessError` on the `open`,
`os.listdir` and `os.scandir` audit events for a path inside one of `roots` (links resolved),
and sets `HF_HUB_OFFLINE=1` so nothing falls back to a download. Files opened by native code
without a Python audit event (safetensors' Rust reader) are not seen here; stage 5 therefore
also runs the student once with the teacher folders moved away.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_WATCHED_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})


class TeacherAccessError(PermissionError):
    """The student process tried to read a teacher's file after teacher removal."""


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def forbid_reads(roots: Iterable[Path]) -> None:
    """From now on, in this process, any open or listing under `roots` raises."""
    forbidden = [Path(root).resolve() for root in roots]
    os.environ["HF_HUB_OFFLINE"] = "1"

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED_EVENTS or not args or isinstance(args[0], int) or args[0] is None:
            return
        wanted = Path(os.fsdecode(args[0])).resolve()
        if _inside(wanted, forbidden):
            raise TeacherAccessError(f"the student tried to read a teacher file after teacher removal: {wanted}")

    sys.addaudithook(hook)
