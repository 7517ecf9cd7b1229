"""The student scored in a process of its own, where no teacher file can be read.

`python -m nexus_kernel.stages.validate_child JOB.json` installs `guard.forbid_reads` on the job's
teacher folders before anything else, rebuilds the student from the run's checkpoint (the
same `build_student` stage 4 used) and scores every capability with its owner's
`retention_metric`. It writes `{"scores": {capability: {benchmark: Score json with
per_item}}}` to the job's output, or `{"error", "teacher_path"}` and exit code 3 when the
student wanted a teacher's file (`TEACHER_ACCESS_EXIT`), or `{"error"}` and 1 otherwise.
Stage 5 runs it; `evaluate_in_child` is the parent's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

TEACHER_ACCESS_EXIT = 3


def evaluate_in_child(job: dict[str, Any], job_file: Path, timeout: float | None = None) -> tuple[int, dict[str, Any], str]:
    """Run the child on `job` (written to `job_file`); returns its exit code, its JSON answer
    (empty when it wrote none) and the tail of its stderr."""
    from nexus_kernel.run.fsio import atomic_write_json

    atomic_write_json(job_file, job)
    output = Path(job["output"])
    output.unlink(missing_ok=True)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run([sys.executable, "-m", "nexus_kernel.stages.validate_child", str(job_file)],
                               capture_output=True, text=True, env=environment, timeout=timeout, check=False)
    answer = json.loads(output.read_text()) if output.is_file() else {}
    return completed.returncode, answer, completed.stderr[-4000:]


def _teacher_path(error: BaseException, roots: list[Path]) -> str | None:
    """The teacher path an error is about: the guard's, or a missing file under a root."""
    from nexus_kernel.teachers.guard import TeacherAccessError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TeacherAccessError):
            return str(current).rsplit(": ", 1)[-1]
        if isinstance(current, OSError) and current.filename:
            wanted = Path(os.fsdecode(current.filename)).absolute()
            if any(wanted == root or wanted.is_relative_to(root) for root in roots):
                return str(wanted)
        current = current.__cause__ or current.__context__
    text = str(error)
    return next((str(root) for root in roots if str(root) in text), None)


def _score_all(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from nexus_kernel.algorithms.retention import score_capabilities
    from nexus_kernel.config import load_config
    from nexus_kernel.plugins import load_plugins
    from nexus_kernel.run.runner import RunContext
    from nexus_kernel.student.build import build_student
    from nexus_kernel.student.model import StudentCapability
    from nexus_kernel.student.weights import tensors_from_bytes

    torch.set_num_threads(int(job.get("threads", 1)))
    run_dir = Path(job["run_dir"])
    config = load_config(Path(job["config"]))
    plugins = load_plugins(frozenset(job["plugins"]) if job["plugins"] is not None else None,
                           always=config.section("plugins")["always_load"])
    context = RunContext(run_dir, config, plugins, job["plugins"] is not None)
    architecture = json.loads((run_dir / "architecture.json").read_text())
    student = build_student(context, architecture)
    # Read through Python's open (an audited event), not safetensors' native reader, so the
    # guard sees where the weights really come from, links included.
    student.load_state_dict(tensors_from_bytes((run_dir / job["weights"]).read_bytes()))
    student.eval()
    with torch.inference_mode():
        return score_capabilities(plugins, job["datasets"], lambda name: StudentCapability(student, name),
                                  job["datasets"], job["limit"], run_dir)


def main(job_file: str) -> int:
    from nexus_kernel.run.fsio import atomic_write_json
    from nexus_kernel.teachers.guard import forbid_reads

    job = json.loads(Path(job_file).read_text())
    roots = [Path(root).absolute() for root in job["forbid"]]
    forbid_reads(roots)  # before anything else is imported or read
    output = Path(job["output"])
    try:
        atomic_write_json(output, {"scores": _score_all(job)})
        return 0
    except BaseException as exc:  # noqa: BLE001  (every failure is reported to the parent)
        wanted = _teacher_path(exc, roots)
        atomic_write_json(output, {"error": f"{type(exc).__name__}: {exc}", "teacher_path": wanted,
                                   "traceback": traceback.format_exc()[-3000:]})
        return TEACHER_ACCESS_EXIT if wanted else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
