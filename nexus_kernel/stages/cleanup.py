"""Stage 7, archive and cleanup: keep the record, then (only when asked) delete what is spent.

It writes `report.html`, then `archive/<run>.tar.gz` (reproducible: sorted entries, no
timestamps) with the logs, the training journal, every stage report, the profiles and PCA
summaries (`profile.json`, never the bases), the architecture and the bundle's manifest.

Sanitization lists what it would delete: the run's training-only artifacts (pools, phase
checkpoints, PCA bases, the validation and staging scratch) and the teachers' folders inside
`registry.models_dir`: the demo teachers Nexus built (`nexus_demo.json`; unless
`cleanup.delete_teachers = false`) and, only with `cleanup.delete_user_teachers = true`, a
user's own. A teacher folder outside `registry.models_dir` is never deleted. The
declared roots are the run directory and `registry.models_dir`; links are removed, never
followed. It is a dry run unless `nexus run --yes`; the plan and what was done go to
`cleanup_report.json`.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

from nexus_kernel.run.cleanup import Deletion, plan_removal, remove
from nexus_kernel.run.fsio import atomic_write_bytes, atomic_write_json
from nexus_kernel.run.layout import (
    ARCHIVE_DIR,
    CHECKPOINT_DIR,
    CLEANUP_REPORT,
    PROFILE_DIR,
    STAGING,
    STUDENT_FILE,
    VALIDATE_DIR,
    bundle_folder,
    teacher_folders,
)
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.runner import RunContext

_ARCHIVED = ("env.json", "state.json", "architecture.json", "training.jsonl", "distill_report.json",
             "verify_report.json", "package_report.json", "report.html", "configs/global_config.json",
             "configs/seed.txt", "configs/teacher_registry.json", "niwt_stage2_output/summary.json")

log = get_logger("cleanup")


def archive_members(run_dir: Path, bundle_manifest: Path | None) -> dict[str, Path]:
    """Archive name to file: the fixed list, every log and profile, and the bundle manifest."""

    members = {name: run_dir / name for name in _ARCHIVED if (run_dir / name).is_file()}
    for path in sorted((run_dir / "logs").glob("*")) + sorted((run_dir / PROFILE_DIR).glob("*/profile.json")):
        if path.is_file() and not path.is_symlink():
            members[path.relative_to(run_dir).as_posix()] = path
    if bundle_manifest is not None and bundle_manifest.is_file():
        members["bundle/manifest.json"] = bundle_manifest
    return members


def tar_gz(members: dict[str, Path], prefix: str) -> bytes:
    """A gzip'd tar of `members` under `prefix/`, byte-identical for identical files."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, tarfile.open(fileobj=zipped, mode="w") as tar:
        for name, path in sorted(members.items()):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def training_only(run_dir: Path) -> list[Path]:
    """The run's artifacts only training needed (the fp32 student and the reports stay)."""
    checkpoints = run_dir / CHECKPOINT_DIR
    targets = [path for path in sorted(checkpoints.iterdir()) if path != run_dir / STUDENT_FILE] \
        if checkpoints.is_dir() else []
    targets += sorted((run_dir / PROFILE_DIR).glob("*/basis.safetensors"))
    targets += [path for path in (run_dir / VALIDATE_DIR, run_dir / Path(STAGING).parent) if path.exists()]
    return targets


def sanitization_plan(context: RunContext) -> tuple[list[Deletion], list[Path], list[str]]:
    """What stage 7 would delete, the roots it may delete in, and what it leaves and why."""
    from nexus_kernel.teachers.demo import read_marker

    models_dir = Path(context.config.section("registry")["models_dir"]).resolve()
    roots = [context.run_dir.resolve(), models_dir]
    targets = training_only(context.run_dir)
    settings = context.config.section("cleanup")
    kept = []
    for name, folder in sorted(teacher_folders(context.run_dir).items()):
        if not folder.exists() and not folder.is_symlink():
            continue
        ours = read_marker(folder) is not None
        if not (folder.parent.resolve() / folder.name).is_relative_to(models_dir):
            kept.append(f"teacher {name}: {folder} is outside registry.models_dir {models_dir}; not deleted")
        elif ours and not settings["delete_teachers"]:
            kept.append(f"teacher {name}: a demo teacher, and cleanup.delete_teachers is false")
        elif not ours and not settings["delete_user_teachers"]:
            kept.append(f"teacher {name}: your own folder (no nexus_demo.json); deleted only with "
                        "cleanup.delete_user_teachers = true")
        else:
            targets.append(folder)
    return plan_removal(targets, roots), roots, kept


def run_cleanup(context: RunContext) -> str:
    """Stage 7 (see the module docstring)."""
    from nexus_kernel.run.report import write_report
    from nexus_kernel.student.bundle import MANIFEST

    write_report(context.run_dir)
    run_name = context.config.section("run")["name"]
    archive = context.run_dir / ARCHIVE_DIR / f"{run_name}.tar.gz"
    members = archive_members(context.run_dir, bundle_folder(context.run_dir, context.config) / MANIFEST)
    atomic_write_bytes(archive, tar_gz(members, run_name))
    plan, roots, kept = sanitization_plan(context)
    confirmed = context.confirm_deletions
    remove(plan, roots, dry_run=not confirmed)
    total = sum(item.bytes for item in plan)
    report: dict[str, Any] = {
        "archive": str(archive), "archived": sorted(members), "roots": [str(root) for root in roots],
        "dry_run": not confirmed, "deleted" if confirmed else "would_delete": [
            {"path": str(item.path), "bytes": item.bytes, "link": item.link} for item in plan],
        "bytes": total, "kept": kept,
    }
    atomic_write_json(context.run_dir / CLEANUP_REPORT, report)
    for line in kept:
        log.info("kept", detail=line)
    action = "deleted" if confirmed else "would delete (dry run; `nexus run --yes` deletes)"
    log.info("sanitization", action=action, files=len(plan), megabytes=round(total / 1e6, 2))
    return f"archive {archive.name} ({len(members)} files); {action} {len(plan)} files, {total / 1e6:.1f} MB"
