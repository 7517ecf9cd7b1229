"""Stage 0's lock: the resolved scope of a run, and the refusal to run on a changed one.

The scope is the validated config (after `--plugins`), the plugin versions and the capability
taxonomy. Its hash is stored in `configs/global_config.json`; a later `nexus run` whose scope
hashes differently is refused unless the user passes `--relock`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_kernel.errors import LockError
from nexus_kernel.fsio import sha256_json

LOCK_FILE = Path("configs/global_config.json")
SEED_FILE = Path("configs/seed.txt")
LOCK_FORMAT = 1


def scope_hash(scope: dict[str, Any]) -> str:
    return sha256_json(scope)


def read_locked_scope(run_dir: Path) -> dict[str, Any] | None:
    """The scope stored by an earlier stage 0 in `run_dir`, or None if there is no lock yet."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return None
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
        return lock["scope"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LockError(
            f"{path}: unreadable lock ({exc}); rerun with --relock to write a new one"
        ) from None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    """Human lines such as `hardware.memory_budget_gb: 16.0 -> 8.0` for keys that differ."""
    before, after = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            changes.append(f"{key}: {before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}")
    if len(changes) > limit:
        changes = changes[:limit] + [f"... and {len(changes) - limit} more"]
    return changes


def check_scope(run_dir: Path, scope: dict[str, Any], relock: bool) -> bool:
    """Compare `scope` with the lock in `run_dir`.

    Returns True when stage 0 must run again because the lock differs (or is unreadable) and
    `relock` is set; False when the lock matches or does not exist yet. Raises `LockError`
    listing the changed keys when it differs and `relock` is not set.
    """
    try:
        locked = read_locked_scope(run_dir)
    except LockError:
        if relock:
            return True
        raise
    if locked is None or scope_hash(locked) == scope_hash(scope):
        return False
    if relock:
        return True
    changes = "\n  ".join(describe_changes(locked, scope))
    raise LockError(
        f"the config changed since it was locked in {run_dir / LOCK_FILE}:\n  {changes}\n"
        "Later stages refuse to run on a changed config. Rerun with --relock to accept the "
        "change (stage 0 and every stage after it run again), or use another --run-dir."
    )
