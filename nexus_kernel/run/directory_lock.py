"""One `nexus run` per run directory at a time: an exclusive `fcntl.flock` on `.nexus-run.lock`.

The lock is taken before the run touches anything in the directory (temp-file clean-up,
teacher restores, stages) and held until the process ends. The operating system releases a
`flock` when its holder dies, so a lock file left by a killed run is simply taken over; the
file only carries the holder's PID and start time, to name it when a second run is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nexus_kernel.errors import NexusError
from nexus_kernel.run.layout import RUN_LOCK


class RunDirectoryBusy(NexusError):
    """Another live `nexus run` holds the run directory's lock."""


def _holder(handle: int) -> str:
    os.lseek(handle, 0, os.SEEK_SET)
    text = os.read(handle, 4096).decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
        return f"PID {record['pid']}, started {record['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its PID yet"


@contextmanager
def exclusive_run_directory(run_dir: Path) -> Iterator[str | None]:
    """Hold `run_dir`'s lock for the block. Yields the previous holder's record when the lock
    file was left by a run that died (taken over), else None. Raises `RunDirectoryBusy`,
    naming the holder's PID, when a live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_LOCK
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(
                f"{run_dir} is in use by another nexus run ({_holder(handle)}; lock file {path}); wait "
                "for it to finish, stop it, or give this run another --run-dir") from None
        left = os.fstat(handle).st_size > 0
        previous = _holder(handle) if left else None
        record = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(handle, 0)
        os.lseek(handle, 0, os.SEEK_SET)
        os.write(handle, json.dumps(record).encode())
        try:
            yield previous
        finally:
            os.ftruncate(handle, 0)  # an empty file: nobody to report as a crashed holder
    finally:
        os.close(handle)  # closing releases the lock
