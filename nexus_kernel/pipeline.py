"""The Nexus pipeline: stages -1 to 7 and what each one reads and writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexus_kernel import doctor
from nexus_kernel.errors import EnvironmentCheckError
from nexus_kernel.file_hashes import FileHashCache, folder_fingerprint
from nexus_kernel.fsio import atomic_write_json, atomic_write_text, sha256_file
from nexus_kernel.lock import LOCK_FILE, LOCK_FORMAT, SEED_FILE, scope_hash
from nexus_kernel.logs import get_logger
from nexus_kernel.runner import RunContext, Stage

from nexus_kernel.teachers import ensure_teachers

SUMMARY_FILE = "niwt_stage2_output/summary.json"

ENV_FILE = "env.json"
REGISTRY_FILE = "configs/teacher_registry.json"
HASH_CACHE = "cache/teacher_file_hashes.json"

log = get_logger("pipeline")


def build_scope(context: RunContext) -> dict[str, Any]:
    """What stage 0 locks: config, plugin versions and capability taxonomy (no file contents)."""
    config = context.config
    owned = context.plugins.capabilities()
    # A table for an installed but unselected plugin is fine: that plugin is never registered.
    config.check_capability_names([*owned, *(r.name for r in context.plugins.not_selected)])
    capabilities = {}
    for name, (capability, record) in owned.items():
        settings = config.capability_settings(name)
        capabilities[name] = {
            **capability.describe(),
            "plugin": record.distribution,
            "max_rank": settings["max_rank"] or capability.max_rank,
            "data_dir": settings["data_dir"],
        }
    return {
        "config": config.values,
        "selection": sorted(record.name for record in context.plugins.loaded)
        if context.selection_active else None,
        "plugins": context.plugins.versions(),
        "capabilities": capabilities,
    }


def _doctor_inputs(context: RunContext) -> dict[str, Any]:
    hardware = context.config.section("hardware")
    return doctor.fingerprint(hardware["memory_budget_gb"], hardware["device"])


def run_doctor(context: RunContext) -> str:
    hardware = context.config.section("hardware")
    report = doctor.examine(hardware["memory_budget_gb"], hardware["device"])
    atomic_write_json(context.run_dir / ENV_FILE, report.to_json())
    for check in report.warnings:
        log.warning("environment", check=check.name, detail=check.detail, fix=check.fix)
    if report.missing:
        lines = "\n".join(f"  - {c.name}: {c.detail}; fix: {c.fix}" for c in report.missing)
        raise EnvironmentCheckError(f"required pieces are missing:\n{lines}")
    return f"device {report.device}, budget {report.memory_budget_gb:g} GB, {len(report.warnings)} warnings"


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


def _registry_inputs(context: RunContext) -> dict[str, Any]:
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
            log.warning("capability has no teacher in the CSV; it will not be distilled",
                        capability=name, csv=registry["csv"])
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


def _profile_inputs(context: RunContext) -> dict[str, Any]:
    return {"profiling": context.config.section("profiling"),
            "memory_budget_gb": context.config.section("hardware")["memory_budget_gb"]}


def run_profile(context: RunContext) -> str:
    from nexus_kernel.stage_profile import run_profile as profile

    return profile(context)


def run_architecture(context: RunContext) -> str:
    from nexus_kernel.stage_architecture import run_architecture as architecture

    return architecture(context)


def run_distill(context: RunContext) -> str:
    from nexus_kernel.stage_distill import run_distill as distill

    return distill(context)


def run_validate(context: RunContext) -> str:
    from nexus_kernel.stage_validate import run_validate as validate

    return validate(context)


def run_package(context: RunContext) -> str:
    from nexus_kernel.stage_package import run_package as package

    return package(context)


def bundle_still_valid(context: RunContext) -> str | None:
    """Stage 6 reruns when its bundle is missing or fails verification."""
    from nexus_kernel.bundle import BundleError, verify_bundle
    from nexus_kernel.stage_package import bundle_folder

    try:
        verify_bundle(bundle_folder(context))
    except BundleError as exc:
        return f"bundle missing or modified ({exc})"
    return None


def run_cleanup(context: RunContext) -> str:
    from nexus_kernel.stage_cleanup import run_cleanup as cleanup

    return cleanup(context)


def stages() -> list[Stage]:
    """Every stage of the pipeline, in order; `action=None` marks one not built yet."""
    return [
        Stage(-1, "doctor", "environment check", (ENV_FILE,), run_doctor, _doctor_inputs),
        Stage(0, "lock", "config lock", (str(LOCK_FILE), str(SEED_FILE)), run_lock, build_scope),
        Stage(1, "registry", "teacher registry", (REGISTRY_FILE,), run_registry, _registry_inputs),
        Stage(2, "profile", "profiling (NIWT)", (SUMMARY_FILE,), run_profile, _profile_inputs),
        Stage(3, "architecture", "architecture", ("architecture.json",), run_architecture,
              lambda context: context.config.section("student")),
        Stage(4, "distill", "distillation", ("checkpoints/student.safetensors", "distill_report.json"),
              run_distill, lambda context: context.config.section("distill")),
        Stage(5, "validate", "teacher removal and retention", ("verify_report.json",), run_validate),
        Stage(6, "package", "quantization and bundle", ("package_report.json",), run_package,
              lambda context: context.config.section("package"), bundle_still_valid),
        Stage(7, "cleanup", "archive and cleanup", ("cleanup_report.json",), run_cleanup,
              lambda context: {**context.config.section("cleanup"), "confirm": context.confirm_deletions}),
    ]

