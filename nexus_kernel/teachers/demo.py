"""Demo teachers: find which registry entries need one, build them (in parallel, with a
progress bar), and cache them by the hash of their recipe.

A folder is ours only when it holds `nexus_demo.json`; a folder without it is a user's teacher
and is never touched. A build writes into a hidden partial folder beside the target and renames
it into place when complete, so an interrupted build leaves no half-written teacher.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexus_kernel.contracts import DemoBuildResult, DemoTeacher
from nexus_kernel.errors import RegistryError, StageError
from nexus_kernel.plugins import PluginSet
from nexus_kernel.run.fsio import atomic_write_json, canonical_json, sha256_bytes
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.seeding import seed_everything
from nexus_kernel.teachers.registry import TeacherEntry, TeacherRegistry
from nexus_kernel.teachers.removal import away_path

RECIPE_FILE = "nexus_demo.json"
PARTIAL_PREFIX = ".partial-"

log = get_logger("teachers")


def recipe_digest(demo: DemoTeacher) -> str:
    """Hash of everything that decides the demo teacher's weights."""
    return sha256_bytes(canonical_json(
        {"name": demo.name, "capability": demo.capability, "recipe": dict(demo.recipe)}
    ).encode())


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The build record of a demo teacher folder, or None for a folder we did not build."""
    try:
        return json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class PlannedBuild:
    """One demo teacher to build (or found cached) for one registry entry."""

    entry: TeacherEntry
    demo: DemoTeacher
    digest: str
    cached: bool

    @property
    def folder(self) -> Path:
        return Path(self.entry.path)


def plan_builds(
    entries: Sequence[TeacherEntry], plugins: PluginSet, settings: Mapping[str, Mapping[str, Any]],
) -> list[PlannedBuild]:
    """The demo builds behind `entries`. A user's folder (no marker) is used as it is; a missing
    folder that no plugin can build is an error naming the teacher and the folder."""
    planned = []
    for entry in entries:
        folder = Path(entry.path)
        moved = away_path(folder)
        if not folder.exists() and moved.exists():
            raise RegistryError(
                f"teacher {entry.name!r}: its folder {folder} is at {moved}, where a killed stage 5 moved "
                "it; `nexus run` on that run directory puts it back first (or rename it back yourself)")
        marker = read_marker(folder)
        if folder.exists() and marker is None:
            continue
        capability, _ = plugins.capabilities()[entry.capability]
        demo = plugins.call_for(entry.capability, "demo_teacher", capability=capability,
                                settings=settings.get(entry.capability, {}))
        if demo is None or demo.name != entry.name:
            if folder.exists():
                continue
            offered = f"; its plugin builds {demo.name!r}" if demo is not None else ""
            raise RegistryError(
                f"teacher {entry.name!r} ({entry.capability}): folder {folder} does not exist and "
                f"no plugin can build it{offered}. Put the model there or fix the CSV row."
            )
        digest = recipe_digest(demo)
        planned.append(PlannedBuild(entry, demo, digest,
                                    cached=marker is not None and marker.get("recipe_sha256") == digest))
    return planned


def build_in_worker(demo: DemoTeacher, digest: str, folder: str, queue: Any) -> dict[str, Any]:
    """Worker-process body: train into a partial folder, check the scores, rename into place,
    and return the build record (what `nexus_demo.json` holds). `queue.put((name, steps))` gets
    the progress; a build that falls short raises `StageError` with its figures and saves nothing."""
    from transformers.utils import logging as transformers_logging

    # One progress bar (the parent's) is enough; transformers' save bars and hints would tear it.
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    target = Path(folder)
    partial = target.parent / f"{PARTIAL_PREFIX}{target.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    seed_everything(int(demo.recipe.get("seed", 0)))
    started = time.perf_counter()
    try:
        result = demo.build(partial, demo.recipe, lambda steps: queue.put((demo.name, steps)))
        if not isinstance(result, DemoBuildResult):
            result = DemoBuildResult(dict(result))
        seconds = time.perf_counter() - started
        _check_build(demo, result)
        record = {
            "name": demo.name, "capability": demo.capability, "recipe_sha256": digest,
            "recipe": dict(demo.recipe), "build_seconds": round(seconds, 1),
            "scores": {name: score.to_json() for name, score in result.scores.items()},
            "training": dict(result.training),
        }
        atomic_write_json(partial / RECIPE_FILE, record)
        _replace_folder(target, partial)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return record


def _check_build(demo: DemoTeacher, result: DemoBuildResult) -> None:
    """Refuse a build that never reached its validation target within the step cap, or whose
    held-out score is below the minimum; the error gives the figures and what to change."""
    headline = result.scores.get(demo.benchmark)
    if headline is None:
        raise StageError(f"demo teacher {demo.name!r}: its build reported {sorted(result.scores)}, "
                         f"not its headline benchmark {demo.benchmark!r}")
    training = result.training
    rounds = training.get("rounds") or []
    trained = f"after {training['steps']} steps" if "steps" in training else ""
    validation = (f"; validation {rounds[-1]['score']:.3f} {trained} (target {training['target']:.2f})"
                  if rounds and training.get("target") is not None else "")
    if training.get("reached") is False:
        raise StageError(
            f"demo teacher {demo.name!r} did not reach its validation target within its cap of "
            f"{demo.steps} steps{validation}; held-out {demo.benchmark} {headline.value:.3f}; not saved. "
            "The recipe has too little margin for this machine: raise its plan's `steps`, or put a "
            "trained teacher in the folder the CSV names"
        )
    if headline.value < demo.minimum:
        raise StageError(
            f"demo teacher {demo.name!r} scored {headline.value:.3f} on held-out "
            f"{demo.benchmark}, below its minimum {demo.minimum:.2f}{validation}; not saved"
        )


def _replace_folder(target: Path, partial: Path) -> None:
    """Move `partial` to `target`, first moving aside an older demo build (never a user's folder)."""
    if target.exists():
        if read_marker(target) is None:
            raise StageError(f"{target} appeared during the build and is not a demo teacher; "
                             "left alone")
        stale = target.parent / f"{PARTIAL_PREFIX}{target.name}-stale-{os.getpid()}"
        target.rename(stale)
        shutil.rmtree(stale)
    partial.rename(target)


@dataclass(frozen=True)
class BuildReport:
    """What `build_teachers` did for one teacher."""

    name: str
    capability: str
    folder: str
    cached: bool
    seconds: float
    scores: dict[str, dict[str, Any]]
    training: dict[str, Any]

    def headline(self) -> str:
        figures = ", ".join(f"{name} {score['value']:.3f} (n={score['n']})"
                            for name, score in self.scores.items())
        how = "cached" if self.cached else f"built in {self.seconds:.0f} s"
        rounds = self.training.get("rounds") or []
        if rounds and not self.cached:
            how += f", {self.training['steps']} steps, validation {rounds[-1]['score']:.3f}"
        return f"{self.name} [{self.capability}]: {how}; held-out {figures}"


def _report_of(build: PlannedBuild, record: Mapping[str, Any], cached: bool) -> BuildReport:
    return BuildReport(build.demo.name, build.demo.capability, str(build.folder), cached,
                       float(record.get("build_seconds", 0.0)), dict(record.get("scores", {})),
                       dict(record.get("training", {})))


class _StepBar:
    """One progress bar over several builds. Its total is what each build expects to train (its
    first round); a build that trains past that counts at its cap until it ends, and an ended
    build counts what it trained, so the estimate is honest either way."""

    def __init__(self, demos: Sequence[DemoTeacher], show: bool) -> None:
        from contextlib import ExitStack

        from nexus_kernel.run.progress import progress

        self.caps = {demo.name: demo.steps for demo in demos}
        self.allotted = {demo.name: min(demo.expected_steps or demo.steps, demo.steps) for demo in demos}
        self.done = dict.fromkeys(self.caps, 0)
        self.opened = ExitStack()
        self.bar = self.opened.enter_context(progress(
            sum(self.allotted.values()), f"training {len(demos)} demo teacher{'s' * (len(demos) > 1)}",
            show=show, leave=True))

    def advance(self, name: str, steps: int) -> None:
        self.done[name] += steps
        if self.done[name] > self.allotted[name]:
            self._allot(name, max(self.caps[name], self.done[name]))
        self.bar.update(steps)

    def finish(self, name: str, line: str) -> None:
        self._allot(name, self.done[name])
        self.bar.write(line)

    def close(self) -> None:
        self.opened.close()

    def _allot(self, name: str, steps: int) -> None:
        self.allotted[name] = steps
        self.bar.total = sum(self.allotted.values())
        self.bar.refresh()


def build_teachers(
    planned: Sequence[PlannedBuild], jobs: int = 2, force: bool = False, show_progress: bool = True,
) -> list[BuildReport]:
    """Build every planned teacher that is not cached (all of them with `force`), `jobs` at a
    time in worker processes, with one progress bar over all their training steps."""
    import concurrent.futures
    import multiprocessing
    import queue as queue_module

    reports: dict[str, BuildReport] = {}
    for build in planned:
        # Left by a build that was killed (the prefix marks them as ours), cached teacher or not.
        for stale in build.folder.parent.glob(f"{PARTIAL_PREFIX}{build.folder.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    todo = []
    for build in planned:
        if build.cached and not force:
            reports[build.demo.name] = _report_of(build, read_marker(build.folder) or {}, True)
        else:
            todo.append(build)
    if todo:
        for build in todo:
            build.folder.parent.mkdir(parents=True, exist_ok=True)
        todo.sort(key=lambda build: build.demo.expected_seconds, reverse=True)  # longest first
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(
            max_workers=max(1, min(jobs, len(todo))), mp_context=context,
        ) as pool:
            steps = manager.Queue()
            futures = {
                pool.submit(build_in_worker, build.demo, build.digest, str(build.folder), steps): build
                for build in todo
            }
            bar = _StepBar([build.demo for build in todo], show_progress)
            pending = set(futures)
            failures = []
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.5)
                while True:
                    try:
                        bar.advance(*steps.get_nowait())
                    except queue_module.Empty:
                        break
                for future in done:
                    build = futures[future]
                    try:
                        record = future.result()
                    except Exception as exc:  # reported together below, after the others finish
                        failures.append(f"{build.demo.name}: {exc}")
                        continue
                    reports[build.demo.name] = _report_of(build, record, False)
                    bar.finish(build.demo.name, reports[build.demo.name].headline())
            bar.close()
        if failures:
            raise StageError("demo teacher build failed:\n  " + "\n  ".join(failures))
    return [reports[build.demo.name] for build in planned]


def ensure_teachers(
    config: Any, plugins: PluginSet, selection_active: bool, jobs: int = 2, force: bool = False,
    show_progress: bool = True,
) -> tuple[TeacherRegistry, list[BuildReport]]:
    """Read the config's teacher CSV and build every demo teacher it names that is missing or
    stale (every one with `force`); a user's teacher folder is left as it is. Returns the
    registry (its entries, and the rows left out for unselected plugins) and what was done for
    each demo teacher."""
    from nexus_kernel.teachers.binding import bind_teacher_capabilities
    from nexus_kernel.teachers.registry import read_registry

    registry = config.section("registry")
    owned = {name: (capability, record.distribution)
             for name, (capability, record) in plugins.capabilities().items()}
    entries = bind_teacher_capabilities(
        read_registry(Path(registry["csv"]), owned, Path(registry["models_dir"]), selection_active=selection_active,
                      unselected=plugins.unselected_capabilities), plugins)
    settings = {name: config.capability_settings(name) for name in owned}
    reports = build_teachers(plan_builds(entries, plugins, settings), jobs=jobs, force=force,
                             show_progress=show_progress)
    return entries, reports
