"""Content fingerprints of teacher folders, with a cache so an unchanged folder is not re-read.

`FileHashCache` remembers each file's sha256 together with its size, mtime, ctime and inode.
A file whose four are unchanged, and which last changed more than two seconds before it was
hashed, is taken to have the recorded hash (the fast path); any write, copy over it or
replacement changes the ctime at least, and the file is hashed again.
`folder_fingerprint` is the sha256 of every file under a folder (a linked file is hashed by
what it points to, as a loader reads it; linked folders are not entered), so a teacher's
weights replaced in place change its fingerprint. Hidden files and folders are left out: no
loader reads them, and download tools keep changing metadata there (`.cache/huggingface/`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from nexus_kernel.run.fsio import atomic_write_json, sha256_file, sha256_json

MISSING = "missing"
_RACY_NS = 2_000_000_000


def _stamp(status: os.stat_result) -> list[int]:
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


class FileHashCache:
    """sha256 of files by path, remembered in the JSON file `path` between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._changed = False
        try:
            self._entries: dict[str, dict[str, Any]] = dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            self._entries = {}

    def sha256(self, file: Path) -> str:
        """The hash of `file`'s bytes; read again only when its stat stamp changed."""
        key = str(file)
        stamp = _stamp(file.stat())
        known = self._entries.get(key)
        # A file changed within a clock tick of its hashing can keep its stamp through one more
        # change ("racily clean", as git calls it): such an entry is never trusted.
        if (isinstance(known, dict) and known.get("stamp") == stamp
                and stamp[2] < int(known.get("hashed_ns", 0)) - _RACY_NS):
            return str(known["sha256"])
        hashed_ns = time.time_ns()
        digest = sha256_file(file)
        self._entries[key] = {"stamp": stamp, "sha256": digest, "hashed_ns": hashed_ns}
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) when something new was hashed."""
        if self._changed:
            atomic_write_json(self.path, self._entries)
            self._changed = False


def folder_fingerprint(folder: Path, cache: FileHashCache) -> str:
    """sha256 over the relative path and content hash of every file under `folder`, or
    `MISSING` when there is no such folder."""
    if not folder.is_dir():
        return MISSING
    files = {}
    for current, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(names):
            path = Path(current) / name
            if not name.startswith(".") and path.is_file():
                files[path.relative_to(folder).as_posix()] = cache.sha256(path)
    return sha256_json(files)
