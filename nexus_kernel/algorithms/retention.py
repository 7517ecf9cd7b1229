"""Retention: how much of a teacher's score its student keeps, with an interval.

The rule is student >= `THRESHOLD` x teacher on the same items, scored by the same scorer. A
teacher at or near chance (within a tenth of the way from chance to perfect) makes the ratio
meaningless: the verdict is then "not measurable", never a pass. The 95 % interval of the
ratio comes from a paired bootstrap over the items (the same resampled items for both), with
a fixed seed so the same scores always give the same interval.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_kernel.errors import StageError
from nexus_kernel.run.layout import CHECKPOINT_DIR, capability_benchmarks, reference_file
from nexus_kernel.teachers.binding import bound_capability

THRESHOLD = 0.97
_NEAR_CHANCE = 0.1


def bootstrap_ratio(teacher: Sequence[float], student: Sequence[float], resamples: int = 1000,
                    seed: int = 42) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of mean(student) / mean(teacher) over paired resamples;
    a resample whose teacher mean is 0 is skipped."""
    if len(teacher) != len(student) or not teacher:
        raise ValueError(f"paired scores needed: {len(teacher)} teacher and {len(student)} student items")
    rng = random.Random(seed)
    n = len(teacher)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        teacher_sum = sum(teacher[i] for i in picks)
        if teacher_sum:
            ratios.append(sum(student[i] for i in picks) / teacher_sum)
    if not ratios:
        return (0.0, 0.0)
    ratios.sort()
    return ratios[int(0.025 * (len(ratios) - 1))], ratios[int(0.975 * (len(ratios) - 1))]


def verdict(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> dict[str, Any]:
    """`{"status", "ratio", "interval", ...}` for two `Score.to_json(with_items=True)` dicts (the
    interval needs both `per_item` lists; without them it is None)."""
    chance = teacher["chance"]
    if teacher["value"] <= chance + _NEAR_CHANCE * (1 - chance):
        return {"status": "not measurable", "ratio": None, "interval": None,
                "why": f"teacher {teacher['value']:.3f} is at or near chance {chance:.3f}"}
    ratio = student["value"] / teacher["value"]
    items = teacher.get("per_item"), student.get("per_item")
    interval = list(bootstrap_ratio(*items)) if items[0] and items[1] and len(items[0]) == len(items[1]) else None
    return {"status": "pass" if ratio >= THRESHOLD else f"below {THRESHOLD}", "ratio": ratio, "interval": interval}


def score_capabilities(plugins: Any, names: Iterable[str], model_of: Callable[[str], Any],
                       datasets: Mapping[str, Any], limit: int | None, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each capability's held-out `test` scores (with per-item results) from its owner's
    `retention_metric`, for the model `model_of(name)` gives, with the teacher's reference
    outputs stage 4 recorded in `run_dir`."""
    scores = {}
    for name in sorted(names):
        capability = bound_capability(plugins, run_dir, name)
        found = plugins.call_for(name, "retention_metric", capability=capability, model=model_of(name),
                                 split="test", datasets=datasets[name], limit=limit,
                                 reference=read_reference(run_dir, name))
        scores[name] = checked_scores(name, capability.benchmarks, found)
    return scores


def checked_scores(name: str, benchmarks: Sequence[str], found: Any) -> dict[str, Any]:
    """`retention_metric`'s answer as JSON (with per-item results), or a `StageError` naming
    the capability when it gave none or left out the headline `benchmarks[0]`."""
    if not found:
        raise StageError(f"{name}: its plugin gives no retention_metric scores")
    if benchmarks[0] not in found:
        raise StageError(f"{name}: retention_metric reports {sorted(found)}, not the headline "
                         f"benchmark {benchmarks[0]!r} the capability declares first")
    return {key: score.to_json(with_items=True) for key, score in found.items()}


def read_reference(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The teacher's reference outputs for capability `name` stage 4 stored, or None."""
    from safetensors.torch import load

    path = reference_file(run_dir, name)
    # Read through Python's open so stage 5's guard sees the path (it is not a teacher's).
    return load(path.read_bytes()) if path.is_file() else None


def teacher_scores(run_dir: Path, name: str) -> dict[str, Any]:
    """The teacher's held-out scores (with per-item results) that stage 4 measured."""

    pool = run_dir / CHECKPOINT_DIR / name / "pool.json"
    if not pool.is_file():
        raise StageError(f"{name}: {pool} is missing; the teacher's held-out scores come from stage 4 "
                         "(run `nexus run --from distill`)")
    return json.loads(pool.read_text())["teacher_scores"]  # type: ignore[no-any-return]


def headline_benchmark(name: str, benchmarks: Sequence[str], teacher: Mapping[str, Any]) -> str:
    """The benchmark retention is judged on: the capability's first declared one, whatever
    order the scores were stored in. Raises `StageError` when the teacher was not scored on it."""
    if not benchmarks or benchmarks[0] not in teacher:
        raise StageError(f"{name}: the headline benchmark is the first one its plugin declares "
                         f"({list(benchmarks)}), but retention_metric scored {sorted(teacher)}")
    return benchmarks[0]


def retention_table(run_dir: Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Per capability: the headline benchmark (its first declared one), teacher and student
    figures, and the verdict."""

    declared = capability_benchmarks(run_dir)
    table = {}
    for name in sorted(scores):
        teacher = teacher_scores(run_dir, name)
        headline = headline_benchmark(name, declared.get(name, ()), teacher)
        if headline not in scores[name]:
            raise StageError(f"{name}: the student was scored on {sorted(scores[name])}, the teacher on {headline!r}")
        table[name] = {"benchmark": headline, "teacher": teacher[headline], "student": scores[name][headline],
                       "retention": verdict(teacher[headline], scores[name][headline])}
    return table


def summary_line(table: dict[str, Any]) -> str:
    parts = []
    for name, entry in table.items():
        result = entry["retention"]
        shown = f"{result['ratio']:.3f}" if result["ratio"] is not None else result["status"]
        parts.append(f"{name} {shown}")
    return ", ".join(parts)


def failing(table: dict[str, Any]) -> list[str]:
    return [name for name, entry in table.items() if entry["retention"]["status"] not in ("pass", "not measurable")]
