"""Crash matrix: SIGKILL `nexus run` at a seeded random point of each stage 1-7, run it again,
and compare every weight file with an uninterrupted run.

Each cell is its own tiny project (the four demo architectures trained for two steps, as a
user's own teacher folders; the tests' tiny distillation settings). The reference project runs
`nexus run` once; its state records each stage's seconds. For stage N a fresh project starts
`nexus run`, waits until `state.json` says stage N is running, sleeps a seeded share
(5-95 %) of the reference's seconds for that stage, and sends SIGKILL; `nexus run` is then
started again and must exit 0. A kill that lands after the stage ended (a stage of
milliseconds) is tried again on a fresh project at a quarter of the delay, then at once.
Compared with the reference: the sha256 of every
`.safetensors` file (run directory, bundle and teacher folders, by relative path), and the
teacher folders file by file; nothing may be left moved away (`.nexus-removed`), half-built
(`.partial-*`, `.*.partial`, `.*.old`) or half-written (`.*.tmp`).

    .venv/bin/python benchmarks/crash_matrix.py --seed 15 --json runs/benchmarks/crash_matrix.json

Exits 1 when any cell differs or a rerun fails. About 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kernel_helpers import HANG_GUARD, build_tiny_demo_teachers, file_hashes, tiny_project  # noqa: E402

STAGES = {1: "registry", 2: "profile", 3: "architecture", 4: "distill", 5: "validate", 6: "package", 7: "cleanup"}
LEFTOVERS = (".nexus-removed", ".partial-")


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "NEXUS_PLUGINS"}


def _nexus_run(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nexus_kernel.cli", "run"], cwd=project, env=_environment(),
                          capture_output=True, text=True, timeout=HANG_GUARD, check=False)


def leftovers(project: Path) -> list[str]:
    """Moved-away teachers, partial builds and temp files anywhere in the project."""
    return sorted(path.relative_to(project).as_posix() for path in project.rglob("*")
                  if any(mark in path.name for mark in LEFTOVERS)
                  or (path.name.startswith(".") and path.name.endswith((".tmp", ".partial", ".old"))))


def _running_stage(state_file: Path) -> str | None:
    try:
        stages = json.loads(state_file.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return None
    return next((name for name, entry in stages.items() if entry.get("status") == "running"), None)


def kill_during(project: Path, stage: str, delay: float) -> dict[str, Any]:
    """Start `nexus run`, SIGKILL it `delay` seconds after `stage` starts; where it landed."""
    state_file = project / "runs/demo/state.json"
    process = subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", "run"], cwd=project,
                               env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + HANG_GUARD
    while _running_stage(state_file) != stage:
        if process.poll() is not None:
            raise SystemExit(f"nexus run ended (exit {process.returncode}) before stage {stage} started")
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"stage {stage} did not start within {HANG_GUARD:.0f} s")
        time.sleep(0.002)
    started = time.monotonic()
    while time.monotonic() - started < delay and process.poll() is None:
        time.sleep(0.002)
    landed = _running_stage(state_file)
    ended_first = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return {"seconds_into_stage": round(time.monotonic() - started, 3), "landed_in": landed,
            "run_had_ended": ended_first}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=15, help="seed of the kill points")
    parser.add_argument("--stages", type=int, nargs="*", default=sorted(STAGES), help="stages to kill in")
    parser.add_argument("--json", type=Path, help="also write the matrix here")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shares = {stage: rng.uniform(0.05, 0.95) for stage in sorted(STAGES)}
    work = args.keep or Path(tempfile.mkdtemp(prefix="nexus-crash-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    teachers = build_tiny_demo_teachers(work / "teachers")

    reference = tiny_project(work / "reference", teachers)
    began = time.perf_counter()
    done = _nexus_run(reference)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit("the uninterrupted reference run failed")
    print(f"reference run: {time.perf_counter() - began:.1f} s", flush=True)
    seconds = {name: entry["seconds"]
               for name, entry in json.loads((reference / "runs/demo/state.json").read_text())["stages"].items()}
    expected, expected_teachers = file_hashes(reference, "*.safetensors"), file_hashes(reference / "models")

    rows = []
    for number in args.stages:
        stage = STAGES[number]
        delay = shares[number] * seconds[stage]
        # A stage of a few milliseconds can end before the kill lands: then again, sooner.
        for attempt, factor in enumerate((1.0, 0.25, 0.0), start=1):
            project = tiny_project(work / f"kill-{number}-{stage}-{attempt}", teachers)
            kill = kill_during(project, stage, delay * factor)
            if kill["landed_in"] == stage:
                break
        kill["attempts"] = attempt
        rerun = _nexus_run(project)
        found = file_hashes(project, "*.safetensors")
        differing = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
        row = {"stage": number, "name": stage, "planned_delay": round(delay * factor, 3), **kill,
               "rerun_exit": rerun.returncode, "weight_files": len(expected), "differing": differing,
               "teachers_identical": file_hashes(project / "models") == expected_teachers,
               "leftovers": leftovers(project)}
        row["ok"] = (rerun.returncode == 0 and not differing and row["teachers_identical"]
                     and not row["leftovers"] and kill["landed_in"] == stage)
        rows.append(row)
        print(f"stage {number} {stage:<12} killed {kill['seconds_into_stage']:7.3f} s in "
              f"(of {seconds[stage]:.3f} s; landed in {kill['landed_in']}, attempt {attempt}), rerun exit {rerun.returncode}, "
              f"{len(expected) - len(differing)}/{len(expected)} weight files identical, teachers "
              f"{'identical' if row['teachers_identical'] else 'DIFFER'}, leftovers {row['leftovers'] or 'none'}"
              f"  {'ok' if row['ok'] else 'FAILED'}", flush=True)
        if rerun.returncode != 0:
            print(rerun.stderr[-2000:], file=sys.stderr)
    failed = [row for row in rows if not row["ok"]]
    print(f"{len(rows)} kills, {len(failed)} failed; work folder {work}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seed": args.seed, "reference_seconds": seconds, "cells": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
