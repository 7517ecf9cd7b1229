"""Stage 1, teacher registry: read the CSV, bind each row to the capability serving its
category, build the demo teachers it names, and fingerprint every bound teacher folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_kernel.run.fsio import atomic_write_json, sha256_file
from nexus_kernel.run.layout import HASH_CACHE, REGISTRY_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.runner import RunContext
from nexus_kernel.teachers.demo import ensure_teachers
from nexus_kernel.teachers.fingerprints import FileHashCache, folder_fingerprint

log = get_logger("pipeline")


def registry_inputs(context: RunContext) -> dict[str, Any]:
    registry = context.config.section("registry")
    csv_path = Path(registry["csv"])
    return {
        "csv": registry["csv"],
        "csv_sha256": sha256_file(csv_path) if csv_path.is_file() else None,
        "models_dir": registry["models_dir"],
        "teachers": _registered_teacher_fingerprints(context.run_dir),
    }


def _registered_teacher_fingerprints(run_dir: Path) -> dict[str, str]:
    """The content fingerprint of every teacher folder the last registry bound, so a teacher
    deleted, rebuilt or with its weights replaced in place reruns the registry stage (and,
    through its output, every stage after it)."""
    registry_file = run_dir / REGISTRY_FILE
    if not registry_file.is_file():
        return {}
    try:
        teachers = json.loads(registry_file.read_text(encoding="utf-8"))["teachers"]
        paths = [Path(entry["path"]) for entry in teachers]
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: its output hash no longer matches, so the stage reruns anyway
    cache = FileHashCache(run_dir / HASH_CACHE)
    fingerprints = {str(path): folder_fingerprint(path, cache) for path in paths}
    cache.save()
    return fingerprints


def _report_unserved(context: RunContext, name: str, csv: str) -> None:
    """A capability no CSV row serves is a warning when its plugin could build a demo teacher
    for it (the row was likely forgotten), and an info line when it has none: such a plugin
    (e.g. knowledge) waits for the user's own teacher, and the default run is not wrong without it."""
    capability = context.plugins.capabilities()[name][0]
    demo = context.plugins.call_for(name, "demo_teacher", capability=capability,
                                    settings=context.config.capability_settings(name))
    if demo is None:
        log.info("capability has no teacher in the CSV and no demo teacher; add a CSV row with its Path to "
                 "distil it", capability=name, csv=csv)
    else:
        log.warning("capability has no teacher in the CSV; it will not be distilled", capability=name,
                    csv=csv, demo_teacher=demo.name)


def run_registry(context: RunContext) -> str:
    registry = context.config.section("registry")
    owned = context.plugins.capabilities()
    bound, builds = ensure_teachers(context.config, context.plugins, context.selection_active)
    entries = bound.entries
    skipped = bound.skipped_summary()
    if skipped:
        log.info(skipped)
    for report in builds:
        log.info("demo teacher", teacher=report.name, cached=report.cached, seconds=report.seconds,
                 steps=report.training.get("steps"), scores={k: v["value"] for k, v in report.scores.items()})
    served = {entry.capability for entry in entries}
    for name in owned:
        if name not in served:
            _report_unserved(context, name, registry["csv"])
    cache = FileHashCache(context.run_dir / HASH_CACHE)
    teachers = [{**entry.to_json(), "files_sha256": folder_fingerprint(Path(entry.path), cache)}
                for entry in entries]
    cache.save()
    atomic_write_json(context.run_dir / REGISTRY_FILE, {
        "csv": registry["csv"],
        "models_dir": registry["models_dir"],
        "teachers": teachers,
        "skipped": [row.to_json() for row in bound.skipped],
        "demo_builds": {report.name: {"scores": report.scores, "seconds": report.seconds,
                                      "training": report.training}
                        for report in builds},
        "capabilities": {name: [e.name for e in entries if e.capability == name] for name in owned},
    })
    built = sum(not report.cached for report in builds)
    left_out = f", {len(bound.skipped)} rows of unselected plugins left out" if bound.skipped else ""
    return (f"{len(entries)} teachers for {len(served)} capabilities ({built} demo teachers "
            f"built{left_out})")
