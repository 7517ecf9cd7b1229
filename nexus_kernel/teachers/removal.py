"""Moving teacher folders out of their place for stage 5, and always putting them back.

`teachers_moved_away(folders, journal)` first writes the journal (`teachers_moved.json` in the
run directory, atomically): every folder it is about to rename and where to. Only then does
it rename each folder to `.<name>.nexus-removed` beside itself; when the block ends, however it
ends, each goes back and the journal is removed. A process killed in between leaves the
journal, and `restore_from_journal` (called by `nexus run` before any stage, so stage 1 never
sees a teacher missing and rebuilds it in its place) puts back every folder it lists.

Nothing here deletes a folder: where a folder and its moved-away copy both exist, restoring
stops with an error naming both, for the user to decide.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nexus_kernel.errors import StageError
from nexus_kernel.run.fsio import atomic_write_json

AWAY_SUFFIX = ".nexus-removed"
JOURNAL_FORMAT = 1


def away_path(folder: Path) -> Path:
    """Where stage 5 puts `folder` while the student runs without it."""
    return folder.with_name(f".{folder.name}{AWAY_SUFFIX}")


@dataclass(frozen=True)
class Restored:
    """What `restore_from_journal` did: folders put back and teachers found nowhere."""

    restored: tuple[Path, ...]
    missing: tuple[Path, ...]


class RemovalJournalError(StageError):
    """A journal of moved teachers that cannot be replayed safely (the message says why)."""

    exit_code = 2


def _read_journal(journal: Path) -> list[tuple[Path, Path]]:
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        moves = [(Path(move["folder"]), Path(move["away"])) for move in data["moves"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RemovalJournalError(
            f"{journal}: unreadable journal of teacher folders a killed run moved away ({exc}); the "
            f"folders it moved are named .<name>{AWAY_SUFFIX} beside the teachers: rename them back, "
            "then delete this file") from None
    return moves


def restore_from_journal(journal: Path) -> Restored:
    """Put back every folder the journal lists as moved away; then remove the journal.

    Raises `RemovalJournalError` (and leaves everything as it is) when a folder and its
    moved-away copy both exist. A folder found in neither place is reported, not an error.
    """
    if not journal.is_file():
        return Restored((), ())
    moves = _read_journal(journal)
    clashes = [(folder, away) for folder, away in moves if away.exists() and folder.exists()]
    if clashes:
        listed = "; ".join(f"{folder} and {away}" for folder, away in clashes)
        raise RemovalJournalError(
            f"{journal}: a killed run moved teacher folders away and both places are now taken: {listed}. "
            "Keep the one you want (the moved-away copy is the original), remove or rename the other, "
            "then run again")
    restored, missing = [], []
    for folder, away in moves:
        if away.exists():
            os.rename(away, folder)
            restored.append(folder)
        elif not folder.exists():
            missing.append(folder)
    journal.unlink()
    return Restored(tuple(restored), tuple(missing))


@contextmanager
def teachers_moved_away(folders: Mapping[str, Path], journal: Path) -> Iterator[list[str]]:
    """Rename every existing teacher folder out of its place for the block; always put back."""
    planned = [folder for folder in folders.values() if folder.exists()]
    atomic_write_json(journal, {"format": JOURNAL_FORMAT, "pid": os.getpid(), "moves": [
        {"folder": str(folder), "away": str(away_path(folder))} for folder in planned]})
    moved: list[Path] = []
    try:
        for folder in planned:
            try:
                os.rename(folder, away_path(folder))
            except OSError as exc:
                raise StageError(f"teacher removal: cannot move {folder} away ({exc}); the second pass "
                                 "needs write access to the teachers' folder") from None
            moved.append(folder)
        yield [str(folder) for folder in moved]
    finally:
        for folder in moved:
            os.rename(away_path(folder), folder)
        journal.unlink(missing_ok=True)
