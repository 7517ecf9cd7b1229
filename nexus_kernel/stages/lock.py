"""Stage 0, config lock: the resolved scope of a run, and the refusal to run on a changed one.

The scope is the validated config (after `--plugins`), the plugin versions and the capability
taxonomy. Its hash is stored in `configs/global_config.json`; a later `nexus run` whose scope
hashes differently is refused unless the user passes `--relock`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_kernel.errors import LockError
from nexus_kernel.run.fsio import atomic_write_json, atomic_write_text, sha256_json
from nexus_kernel.run.layout import LOCK_FILE, SEED_FILE
from nexus_kernel.run.runner import RunContext
from nexus_kernel.run.settings import CapabilitySettings

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


def build_scope(context: RunContext) -> dict[str, Any]:
    """What stage 0 locks: config, plugin versions and capability taxonomy with each
    capability's resolved `CapabilitySettings` (no file contents)."""
    config = context.config
    owned = context.plugins.capabilities()
    # A table for an installed but unselected plugin is fine: that plugin is never registered.
    config.check_capability_names([*owned, *(r.name for r in context.plugins.not_selected)])
    capabilities = {}
    for name, (capability, record) in owned.items():
        settings = CapabilitySettings.resolve(capability, config.capability_settings(name))
        # The resolved settings replace the plugin's declared max_rank, alpha_scale and
        # pool_scale: the lock records what the run uses (read back by `locked_settings`).
        capabilities[name] = {**capability.describe(), "plugin": record.distribution, **settings.to_json()}
    return {
        "config": config.values,
        "selection": sorted(record.name for record in context.plugins.loaded)
        if context.selection_active else None,
        "plugins": context.plugins.versions(),
        "capabilities": capabilities,
    }


def run_lock(context: RunContext) -> str:
    scope = build_scope(context)
    datasets: dict[str, dict[str, str]] = {}
    for name, (capability, _) in context.plugins.capabilities().items():
        answer = context.plugins.call_for(
            name, "resolve_datasets", capability=capability,
            settings=context.config.capability_settings(name),
        )
        data_dir = scope["capabilities"][name]["data_dir"]
        datasets[name] = dict(answer) if answer else {"all": data_dir or "synthetic"}
    seed = context.config.section("run")["seed"]
    lock = {
        "format": LOCK_FORMAT,
        "source": str(context.config.source),
        "scope": scope,
        "scope_hash": scope_hash(scope),
        "seed": seed,
        "datasets": datasets,
    }
    atomic_write_json(context.run_dir / LOCK_FILE, lock)
    atomic_write_text(context.run_dir / SEED_FILE, f"{seed}\n")
    return f"{len(scope['capabilities'])} capabilities, seed {seed}, scope {lock['scope_hash'][:12]}"
