"""Deleting what a run owns, and nothing else: plan first (a dry run lists it), then remove.

`plan_removal(targets, roots)` lists every file and link under `targets` (files or folders)
without following links: a link is itself listed, never what it points to, so nothing outside
the declared `roots` is reachable through one. A target whose own location is outside every
root is an error naming it. `remove(plan, dry_run)` deletes the listed entries only when
`dry_run` is false (`--yes`), then the folders the plan emptied.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nexus_kernel.errors import NexusError


class CleanupError(NexusError):
    """A deletion was asked for outside the run's declared roots."""


@dataclass(frozen=True)
class Deletion:
    path: Path
    bytes: int
    link: bool


def _location(path: Path) -> Path:
    """Where `path` itself is (its folder resolved, its own name kept: a link is not followed)."""
    return path.parent.resolve() / path.name


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _entry(path: Path) -> Deletion:
    link = path.is_symlink()
    return Deletion(path, 0 if link else path.stat().st_size, link)


def plan_removal(targets: Iterable[Path], roots: Iterable[Path]) -> list[Deletion]:
    """What removing `targets` would delete (see the module docstring)."""
    allowed = [Path(root).resolve() for root in roots]
    plan: list[Deletion] = []
    for target in targets:
        location = _location(Path(target))
        if not _inside(location, allowed) or location in allowed:
            raise CleanupError(f"refusing to delete {target}: it is not inside the run's roots "
                               f"({', '.join(map(str, allowed))})")
        if location.is_symlink() or location.is_file():
            plan.append(_entry(location))
            continue
        if not location.is_dir():
            continue
        for folder, dirs, files in os.walk(location, followlinks=False):
            for name in sorted(files):
                plan.append(_entry(Path(folder) / name))
            for name in sorted(dirs):
                if (Path(folder) / name).is_symlink():  # a linked folder: remove the link only
                    plan.append(_entry(Path(folder) / name))
    return plan


def remove(plan: list[Deletion], roots: Iterable[Path], dry_run: bool = True) -> list[Deletion]:
    """Delete the plan's entries (nothing when `dry_run`) and then the folders under `roots`
    they leave empty; returns the plan."""
    if dry_run:
        return plan
    allowed = [Path(root).resolve() for root in roots]
    folders = set()
    for deletion in plan:
        if not _inside(_location(deletion.path), allowed):
            raise CleanupError(f"refusing to delete {deletion.path}: outside the run's roots")
        os.unlink(deletion.path)  # unlink never follows a link
        folders.update(parent for parent in deletion.path.parents if _inside(parent.resolve(), allowed)
                       and parent.resolve() not in allowed)
    for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
    return plan
