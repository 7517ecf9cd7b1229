"""Stage 5, teacher removal and retention: the student must stand without its teachers.

No teacher is loaded in this process. The student is scored twice in a child process
(`student_eval`): first with the audit guard refusing every read under the teachers' folders,
then again with those folders moved away as well (renamed next to themselves after a journal
of the moves is written, and put back afterwards; after a crash the next `nexus run` puts
them back from the journal before any stage: see `teacher_removal`). A child that wants a
teacher file fails the gate with the path it wanted. The two passes must agree item for item.

Retention compares those student scores with the teacher's scores that stage 4 measured on
the same held-out items with the same scorer: pass when student >= 0.97 x teacher, with a
paired-bootstrap 95 % interval; a teacher at or near chance is "not measurable". Everything
goes to `verify_report.json`; a capability below the threshold fails the stage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nexus_kernel.algorithms.retention import (
    THRESHOLD,
    failing,
    retention_table,
    summary_line,
)
from nexus_kernel.errors import StageError
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.run.layout import (
    LOCK_FILE,
    MOVED_TEACHERS,
    STUDENT_FILE,
    VALIDATE_DIR,
    VERIFY_REPORT,
    teacher_folders,
)
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import progress
from nexus_kernel.run.runner import RunContext
from nexus_kernel.stages.validate_child import TEACHER_ACCESS_EXIT, evaluate_in_child
from nexus_kernel.teachers.removal import restore_from_journal, teachers_moved_away

log = get_logger("validate")


def restore_moved_teachers(run_dir: Path) -> None:
    """Put back the teacher folders a killed stage 5 left moved away (see `teacher_removal`);
    `nexus run` calls it before any stage."""
    outcome = restore_from_journal(run_dir / MOVED_TEACHERS)
    for folder in outcome.restored:
        log.warning("restored a teacher folder a killed run had moved away", folder=str(folder))
    for folder in outcome.missing:
        log.warning("a teacher folder a killed run had moved away is in neither place", folder=str(folder))


def student_job(context: RunContext, work: Path, forbid: list[Path], label: str) -> dict[str, Any]:
    """The child's job: score the stage-4 student on every capability's held-out items."""

    architecture = json.loads((context.run_dir / "architecture.json").read_text())
    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"]
    return {"run_dir": str(context.run_dir), "config": str(context.config.source),
            "plugins": sorted(r.name for r in context.plugins.loaded) if context.selection_active else None,
            "forbid": [str(path) for path in forbid], "weights": STUDENT_FILE,
            "datasets": {name: datasets[name] for name in architecture["capabilities"]},
            "limit": context.config.section("distill")["eval_samples"],
            "threads": context.config.section("distill")["threads"],
            "output": str(work / f"{label}.json")}


def run_pass(context: RunContext, label: str, folders: dict[str, Path], number: int = 1, passes: int = 1
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One guarded child run, pass `number` of `passes`; returns its scores and the pass's
    record. A teacher read fails the gate with the path; any other crash fails the stage with
    the child's error. A bar counts the capabilities the child has scored, with a line for each."""
    work = context.run_dir / VALIDATE_DIR
    work.mkdir(exist_ok=True)
    job = student_job(context, work, list(folders.values()), label)
    began = time.perf_counter()
    name = f"pass {number}/{passes} ({label})"
    log.info("teacher-removal pass", validation=name, capabilities=len(job["datasets"]))
    with progress(len(job["datasets"]), f"validation {name}", "capability") as bar:
        def reported(event: dict[str, Any]) -> None:
            if event.get("event") == "scored":
                bar.update(1)
                log.info("student scored", validation=name, capability=event["capability"],
                         capabilities=f"{event['done']}/{event['total']}", seconds=event["seconds"])
            elif event.get("event") == "student loaded":
                log.info("student loaded", validation=name, seconds=event["seconds"])

        code, answer, stderr = evaluate_in_child(job, work / f"{label}.job.json", on_progress=reported)
    seconds = round(time.perf_counter() - began, 2)
    if code == TEACHER_ACCESS_EXIT:
        raise StageError(f"teacher-removal gate FAILED ({label}): the student process wanted a teacher file: "
                         f"{answer.get('teacher_path')} ({answer.get('error')})")
    if code != 0 or "scores" not in answer:
        detail = answer.get("error") or stderr.strip().splitlines()[-1:] or "no output"
        raise StageError(f"teacher-removal check ({label}): the student process failed with exit code {code}: {detail}"
                         f" (see {work / (label + '.json')})")
    log.info("teacher-removal pass passed", validation=name, seconds=seconds)
    return answer["scores"], {"name": label, "status": "passed", "seconds": seconds,
                              "forbidden": [str(path) for path in folders.values()]}


def run_validate(context: RunContext) -> str:
    """Stage 5 (see the module docstring)."""
    folders = teacher_folders(context.run_dir)
    restore_moved_teachers(context.run_dir)
    guarded, first = run_pass(context, "guarded", folders, 1, 2)
    with teachers_moved_away(folders, context.run_dir / MOVED_TEACHERS) as moved:
        removed, second = run_pass(context, "teachers moved away", folders, 2, 2)
        second["moved"] = moved
    if removed != guarded:
        raise StageError("teacher-removal check: the student's scores differ between the guarded pass and the pass "
                         "with the teachers moved away; it depends on something outside its checkpoint")
    table = retention_table(context.run_dir, guarded)
    below = failing(table)
    report = {"format": 1, "threshold": THRESHOLD,
              "gate": {"status": "passed", "passes": [first, second], "consistent": True},
              "status": "failed" if below else "passed", "capabilities": table}
    atomic_write_json(context.run_dir / VERIFY_REPORT, report)
    for name, entry in table.items():
        log.info("retention", capability=name, benchmark=entry["benchmark"], teacher=entry["teacher"]["value"],
                 student=entry["student"]["value"], **entry["retention"])
    if below:
        raise StageError(f"retention below {THRESHOLD} x teacher for {', '.join(below)} "
                         f"({summary_line({n: table[n] for n in below})}); see {context.run_dir / VERIFY_REPORT}")
    return f"teacher-removal gate passed (2 passes); retention {summary_line(table)}"
