"""The student scored in a process of its own, where no teacher file can be read.

`python -m nexus_kernel.stages.validate_child JOB.json` installs `guard.forbid_reads` on the job's
teacher folders before anything else, rebuilds the student from the run's checkpoint (the
same `build_student` stage 4 used) and scores every capability with its owner's
`retention_metric`. It writes `{"scores": {capability: {benchmark: Score json with
per_item}}}` to the job's output, or `{"error", "teacher_path"}` and exit code 3 when the
student wanted a teacher's file (`TEACHER_ACCESS_EXIT`), or `{"error"}` and 1 otherwise.
Stage 5 runs it; `evaluate_in_child` is the parent's side.

The child draws no bar (its stderr is the parent's to read): it reports each step done as one
stderr line, `PROGRESS_MARK` and a JSON object (`{"event": "student loaded", "seconds"}`, then
`{"event": "scored", "capability", "done", "total", "seconds"}` per capability), which
`evaluate_in_child` hands to its `on_progress` instead of keeping in the stderr tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEACHER_ACCESS_EXIT = 3
PROGRESS_MARK = "nexus-progress "
_TAIL = 4000


def evaluate_in_child(job: dict[str, Any], job_file: Path, timeout: float | None = None,
                      on_progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[int, dict[str, Any], str]:
    """Run the child on `job` (written to `job_file`); returns its exit code, its JSON answer
    (empty when it wrote none) and the tail of its stderr. Each progress report of the child
    goes to `on_progress` as it comes. Past `timeout` seconds the child is killed and
    `subprocess.TimeoutExpired` raised."""
    import collections
    import threading

    from nexus_kernel.run.fsio import atomic_write_json

    atomic_write_json(job_file, job)
    output = Path(job["output"])
    output.unlink(missing_ok=True)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "nexus_kernel.stages.validate_child", str(job_file)]
    tail: collections.deque[str] = collections.deque()
    kept = 0
    timed_out = threading.Event()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          errors="replace", env=environment) as child:

        def kill() -> None:
            timed_out.set()
            child.kill()

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            for line in child.stderr or ():
                text, mark, report = line.partition(PROGRESS_MARK)  # after a library's unfinished line too
                progress = _progress_report(report) if mark else None
                if progress is not None:
                    if on_progress is not None:
                        on_progress(progress)
                    line = text + "\n" if text.strip() else ""
                tail.append(line)
                kept += len(line)
                while kept - len(tail[0]) >= _TAIL:
                    kept -= len(tail.popleft())
            code = child.wait()
        finally:
            if timer is not None:
                timer.cancel()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(command, timeout or 0)
    answer = json.loads(output.read_text()) if output.is_file() else {}
    return code, answer, "".join(tail)[-_TAIL:]


def _progress_report(text: str) -> dict[str, Any] | None:
    """A progress line's JSON, or None for a line that only looks like one (a library printed
    the mark, or the line was cut): such a line stays in the stderr tail as it is."""
    try:
        report = json.loads(text)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _report(event: str, **fields: Any) -> None:
    """One progress line for the parent (see the module docstring)."""
    sys.stderr.write(PROGRESS_MARK + json.dumps({"event": event, **fields}) + "\n")
    sys.stderr.flush()


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
    import time

    import torch

    from nexus_kernel.algorithms.retention import score_capabilities
    from nexus_kernel.config import load_config
    from nexus_kernel.plugins import load_plugins
    from nexus_kernel.run.progress import quiet_library_bars
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
    started = time.perf_counter()
    with quiet_library_bars():
        student = build_student(context, architecture)
    # Read through Python's open (an audited event), not safetensors' native reader, so the
    # guard sees where the weights really come from, links included.
    student.load_state_dict(tensors_from_bytes((run_dir / job["weights"]).read_bytes()))
    student.eval()
    _report("student loaded", seconds=round(time.perf_counter() - started, 1))
    names = sorted(job["datasets"])
    scores: dict[str, Any] = {}
    with torch.inference_mode():
        for done, name in enumerate(names, start=1):  # one at a time, in score_capabilities' order
            started = time.perf_counter()
            scores |= score_capabilities(plugins, [name], lambda name: StudentCapability(student, name),
                                         job["datasets"], job["limit"], run_dir)
            _report("scored", capability=name, done=done, total=len(names),
                    seconds=round(time.perf_counter() - started, 1))
    return scores


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
