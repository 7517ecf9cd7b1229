"""Seed robustness of the demo teachers: each one built with other seeds (data and weight
init), through the kernel's own build path (validation rounds, margin, held-out check).

Other seeds stand in for other machines: a CPU with other BLAS kernels gives other floats and
so another training trajectory, just as another seed does. Every held-out score must clear
its teacher's minimum (0.90 for the four demo teachers); the script prints one row per build
(held-out score, steps trained of the cap, validation score, seconds) and exits 1 if any
build fell short or failed.

    python benchmarks/demo_teachers.py [--seeds 7 8 9] [--teachers math,vision] [--jobs 2] [--json f.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.errors import StageError
from nexus_kernel.plugins import load_plugins
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.teachers.demo import build_in_worker, recipe_digest


def reseeded(demo: DemoTeacher, seed: int) -> DemoTeacher:
    """`demo` with `seed` for the weight init and for its data generator."""
    recipe = {**demo.recipe, "seed": seed}
    if isinstance(recipe.get("data"), dict) and "seed" in recipe["data"]:
        recipe["data"] = {**recipe["data"], "seed": seed}
    return dataclasses.replace(demo, recipe=recipe)


class _NoProgress:
    def put(self, _: int) -> None:
        pass


def _build(demo: DemoTeacher, folder: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        record = build_in_worker(demo, recipe_digest(demo), folder, _NoProgress())
    except StageError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - started}
    return {"record": record, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--teachers", default="", help="capabilities to build (default: every installed one)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    plugins = load_plugins()
    wanted = {name.strip() for name in args.teachers.split(",") if name.strip()}
    demos = []
    for name, (capability, _) in plugins.capabilities().items():
        if wanted and name not in wanted:
            continue
        demo = plugins.call_for(name, "demo_teacher", capability=capability, settings={})
        if demo is not None:
            demos.append(demo)
    jobs = [(demo, seed) for demo in sorted(demos, key=lambda d: -d.expected_seconds) for seed in args.seeds]
    rows = []
    with tempfile.TemporaryDirectory(prefix="nexus-seeds-") as scratch:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = {pool.submit(_build, reseeded(demo, seed), str(Path(scratch) / f"seed-{seed}" / demo.name)):
                       (demo, seed) for demo, seed in jobs}
            for future in concurrent.futures.as_completed(futures):
                demo, seed = futures[future]
                outcome = future.result()
                row: dict[str, Any] = {"teacher": demo.name, "seed": seed, "minimum": demo.minimum,
                                       "cap": demo.steps, "seconds": round(outcome["seconds"], 1)}
                if "error" in outcome:
                    row["error"] = outcome["error"]
                else:
                    record = outcome["record"]
                    training = record.get("training", {})
                    rounds = training.get("rounds") or [{}]
                    row.update(score=record["scores"][demo.benchmark]["value"], steps=training.get("steps"),
                               validation=rounds[-1].get("score"),
                               rounds=[r["score"] for r in training.get("rounds", [])])
                rows.append(row)
                print(_line(row), flush=True)
    rows.sort(key=lambda row: (row["teacher"], row["seed"]))
    print("\nteacher                 seed  held-out  minimum  steps / cap  validation  seconds")
    for row in rows:
        print(_line(row))
    failed = [row for row in rows if "error" in row or row["score"] < row["minimum"]]
    lowest = min((row["score"] for row in rows if "score" in row), default=float("nan"))
    print(f"\n{len(rows)} builds, {len(failed)} below their minimum or failed; lowest held-out score {lowest:.3f}")
    if args.json:
        atomic_write_json(args.json, {"rows": rows})
    return 1 if failed else 0


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['teacher']:<22} {row['seed']:>5}  FAILED after {row['seconds']:.0f} s: {row['error']}"
    return (f"{row['teacher']:<22} {row['seed']:>5}  {row['score']:8.3f}  {row['minimum']:7.2f}  "
            f"{row['steps']:>5} / {row['cap']:<5}  {row['validation']:10.3f}  {row['seconds']:7.0f}"
            f"   rounds {', '.join(f'{s:.3f}' for s in row['rounds'])}")


if __name__ == "__main__":
    sys.exit(main())
