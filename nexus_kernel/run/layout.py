"""Where every artifact of a run lives: the one place that names the run directory's paths.

Stages write and read each other's artifacts through these names, never through each other's
modules, so they stand side by side. Paths are relative to the run directory unless a
function says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from nexus_kernel.config import Config

STATE_FILE = "state.json"
"""The runner's record: per stage its status, input hash and output hashes."""
RUN_LOCK = ".nexus-run.lock"
"""Held (flock) by the one `nexus run` using the directory."""
EVENTS_LOG = "logs/events.jsonl"

# stage -1 and 0
ENV_FILE = "env.json"
LOCK_FILE = Path("configs/global_config.json")
SEED_FILE = Path("configs/seed.txt")

# stage 1
REGISTRY_FILE = "configs/teacher_registry.json"
HASH_CACHE = "cache/teacher_file_hashes.json"

# stage 2
PROFILE_DIR = "niwt_stage2_output"
"""One folder per capability: `profile.json` and `basis.safetensors`."""
PROFILE_SUMMARY = f"{PROFILE_DIR}/summary.json"

# stage 3
ARCHITECTURE_FILE = "architecture.json"
STUDENT_DIR = "student"
"""The demo student's tokenizer (backbone = config)."""
PRUNED_BACKBONE_DIR = f"{STUDENT_DIR}/backbone"
"""The backbone stage 3 cuts from a teacher (backbone = "teacher:<capability>"): model and tokenizer."""

# stage 4
CHECKPOINT_DIR = "checkpoints"
"""One folder per phase (checkpoints, pool) and the trained student."""
STUDENT_FILE = f"{CHECKPOINT_DIR}/student.safetensors"
TRAINING_JOURNAL = "training.jsonl"
DISTILL_REPORT = "distill_report.json"

# stage 5
VERIFY_REPORT = "verify_report.json"
VALIDATE_DIR = "validate"
"""The guarded child processes' jobs and answers."""
MOVED_TEACHERS = "teachers_moved.json"
"""The journal of teacher folders stage 5 has moved away."""

# stage 6
PACKAGE_REPORT = "package_report.json"
STAGING = "package/staging"
DEFAULT_BUNDLE = "bundles/nexus_bundle_v1"

# stage 7
REPORT_HTML = "report.html"
CLEANUP_REPORT = "cleanup_report.json"
ARCHIVE_DIR = "archive"


def bundle_folder(run_dir: Path, config: Config) -> Path:
    """`[package] bundle_dir` (relative to the config file), or `<run dir>/DEFAULT_BUNDLE`
    when it is empty."""
    configured = config.section("package")["bundle_dir"]
    if not configured:
        return run_dir / DEFAULT_BUNDLE
    return (config.source.parent / Path(configured).expanduser()).resolve()


def reference_file(run_dir: Path, capability: str) -> Path:
    """The teacher's held-out outputs stage 4 recorded for `capability` (`reference_outputs`)."""
    return run_dir / CHECKPOINT_DIR / capability / "reference.safetensors"


def teacher_folders(run_dir: Path) -> dict[str, Path]:
    """Teacher name to its folder, for every teacher stage 1 bound (`REGISTRY_FILE`)."""
    registry = json.loads((run_dir / REGISTRY_FILE).read_text())
    return {entry["name"]: Path(entry["path"]).absolute() for entry in registry["teachers"]}


def capability_benchmarks(run_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each bound capability's benchmarks as stage 1 recorded them with its (first) teacher
    (`REGISTRY_FILE`), the headline first."""
    registry = json.loads((run_dir / REGISTRY_FILE).read_text())
    benchmarks: dict[str, tuple[str, ...]] = {}
    for entry in registry["teachers"]:
        benchmarks.setdefault(entry["capability"], tuple(entry["benchmarks"]))
    return benchmarks
