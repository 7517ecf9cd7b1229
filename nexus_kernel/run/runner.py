"""The stage runner: which stages run, in what order, and what `state.json` remembers.

A stage is skipped when it passed before, its input hash is unchanged and its outputs are
still on disk with the hashes it recorded. Its input hash covers its own external inputs
(`Stage.fingerprint`) and the recorded outputs of every earlier stage, so a change upstream
reruns everything downstream. Once one stage runs, every later selected stage runs too.

Under torchrun, rank 0 (the leader) runs this logic alone and tells the other ranks (`follow`)
each stage it runs: a `Stage.shared` stage (profiling, distillation) runs on every rank at once,
any other on the leader alone while the others wait; then the leader sends how it ended. A
leader that fails outside a shared stage tells the others, so every rank exits with its code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_kernel.config import Config
from nexus_kernel.errors import ExitCodeError, NexusError, StageError
from nexus_kernel.plugins import PluginSet
from nexus_kernel.run import distributed
from nexus_kernel.run.fsio import atomic_write_json, sha256_file, sha256_json
from nexus_kernel.run.layout import STATE_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import quiet_library_bars

PASSED, FAILED, RUNNING = "passed", "failed", "running"

log = get_logger("runner")


@dataclass
class RunContext:
    """What every stage may read: the run directory, the validated config and the plugins."""

    run_dir: Path
    config: Config
    plugins: PluginSet
    selection_active: bool = False
    confirm_deletions: bool = False
    """`nexus run --yes`: stage 7 deletes what its dry run lists."""


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: `action` does its work and returns a one-line summary."""

    number: int
    name: str
    title: str
    outputs: tuple[str, ...]
    action: Callable[[RunContext], str]
    fingerprint: Callable[[RunContext], Any] = lambda context: None
    still_valid: Callable[[RunContext], str | None] = lambda context: None
    """Why the stage's results outside the run directory (e.g. the bundle) are no longer
    there as written, or None when they are."""
    shared: bool = False
    """Under torchrun, whether every rank runs `action` (it shards its work and only rank 0
    writes), not the leader alone."""

    @property
    def label(self) -> str:
        return f"stage {self.number} ({self.name})"


@dataclass
class Outcome:
    """What happened to one stage in this invocation."""

    stage: Stage
    status: str  # passed, failed, skipped, not run
    detail: str = ""
    seconds: float = 0.0


@dataclass
class RunState:
    """`state.json`: per stage its status, input hash and output hashes. Written atomically."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, dict(data["stages"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StageError(f"{path}: unreadable run state ({exc}); delete it to start over") from None

    def record(self, stage: Stage, **fields: Any) -> None:
        self.stages[stage.name] = {"number": stage.number, **fields}
        atomic_write_json(self.path, {"format": 1, "stages": self.stages})


def find_stage(stages: list[Stage], key: str) -> Stage:
    """A stage by name (`registry`) or number (`1`, `-1`)."""
    for stage in stages:
        if key in (stage.name, str(stage.number)):
            return stage
    names = ", ".join(f"{s.name} ({s.number})" for s in stages)
    raise StageError(f"unknown stage {key!r}; stages: {names}")


def _output_hashes(run_dir: Path, stage: Stage) -> dict[str, str] | None:
    """Hash of every declared output, or None if one is missing."""
    hashes = {}
    for output in stage.outputs:
        path = run_dir / output
        if not path.is_file():
            return None
        hashes[output] = sha256_file(path)
    return hashes


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete temp files that a killed atomic write left in `run_dir` (and only there)."""
    stale = [
        Path(folder) / name
        for folder, _, files in os.walk(run_dir, followlinks=False)
        for name in files
        if name.startswith(".") and name.endswith(".tmp") and not (Path(folder) / name).is_symlink()
    ]
    for path in stale:
        path.unlink()
    return stale


class FollowerStopped(ExitCodeError):
    """A rank other than 0 stops because the leader failed (with the leader's exit code)."""


def follow(stages: list[Stage], context: RunContext) -> None:
    """A rank other than 0 under torchrun: run each shared stage the leader announces, wait
    while it runs the others alone, and stop as it does (`FollowerStopped` when it failed)."""
    by_name = {stage.name: stage for stage in stages}
    rank = distributed.world().rank
    while True:
        message = distributed.broadcast(None)
        if message[0] == "done":
            return
        if message[0] == "failed":
            raise FollowerStopped(f"rank {rank}: stopped, rank 0 failed: {message[1]}", message[2])
        stage = by_name[message[1]]
        if stage.shared:
            log.info("stage start", stage=stage.label, rank=rank)
            with quiet_library_bars():
                stage.action(context)


class Leader:
    """Rank 0's side of `follow`: `sharing` is true while a shared stage runs."""

    def __init__(self) -> None:
        self.sharing = False

    @contextmanager
    def leading(self) -> Iterator[Leader]:
        """Around everything rank 0 does for the run: afterwards the other ranks are told the
        run is done, or that it failed and with what. A failure inside a shared stage is not
        sent (the others may be inside a collective): the leader's exit ends them through
        torchrun, and an identical failure ends them on their own. Nothing is sent in one
        process."""
        try:
            yield self
        except Exception as exc:
            if not self.sharing:
                distributed.broadcast(("failed", str(exc) if isinstance(exc, NexusError) else
                                       f"{type(exc).__name__}: {exc}", getattr(exc, "exit_code", 1)))
            raise
        distributed.broadcast(("done",))


class StageRunner:
    """Runs a list of stages over one run directory; under torchrun on rank 0, telling the
    other ranks through `leader` (see `follow`)."""

    def __init__(self, stages: list[Stage], context: RunContext, leader: Leader | None = None) -> None:
        self.stages = sorted(stages, key=lambda stage: stage.number)
        self.context = context
        self.leader = leader or Leader()
        context.run_dir.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temp_files(context.run_dir):
            log.info("removed a temp file left by an interrupted write", path=str(path))
        self.state = RunState.load(context.run_dir)

    def _input_hash(self, stage: Stage) -> str:
        upstream = {
            earlier.name: self.state.stages.get(earlier.name, {}).get("outputs")
            for earlier in self.stages
            if earlier.number < stage.number
        }
        return sha256_json({"stage": stage.name, "inputs": stage.fingerprint(self.context),
                            "upstream": upstream})

    def why_stale(self, stage: Stage) -> str | None:
        """Why `stage` must run again, or None when it is up to date."""
        recorded = self.state.stages.get(stage.name)
        if recorded is None:
            return "never run"
        if recorded.get("status") == RUNNING:
            return "interrupted"
        if recorded.get("status") != PASSED:
            return f"last status: {recorded.get('status')}"
        if recorded.get("input_hash") != self._input_hash(stage):
            return "inputs changed"
        if _output_hashes(self.context.run_dir, stage) != recorded.get("outputs"):
            return "outputs missing or modified"
        return stage.still_valid(self.context)

    def run(
        self, *, start: str | None = None, only: str | None = None, force: bool = False,
        until: str | None = None,
    ) -> list[Outcome]:
        """Run the pipeline. `start` reruns that stage and all after it; `only` runs one stage
        even if up to date (every earlier one must be); `force` reruns everything; `until`
        stops after that stage.

        Stops at the first stage that fails; later ones are "not run".
        A `NexusError` from a stage is recorded as failed and raised again.
        """
        if start and only:
            raise StageError("--from and --only cannot be combined")
        first = find_stage(self.stages, start).number if start else None
        chosen = find_stage(self.stages, only) if only else None
        last = find_stage(self.stages, until).number if until else None
        outcomes: list[Outcome] = []
        running = force
        halted = False
        for stage in self.stages:
            if halted:
                outcomes.append(Outcome(stage, "not run", "an earlier stage did not pass"))
                continue
            if last is not None and stage.number > last:
                outcomes.append(Outcome(stage, "not run", f"after --to {until}"))
                continue
            if chosen is not None and stage is not chosen:
                if stage.number < chosen.number and (reason := self.why_stale(stage)):
                    raise StageError(
                        f"--only {chosen.name}: {stage.label} is not up to date ({reason}); "
                        f"run `nexus run` or `nexus run --from {stage.name}` first"
                    )
                continue
            running = running or stage is chosen or (first is not None and stage.number >= first)
            reason = "forced" if running else self.why_stale(stage)
            if reason is None:
                outcomes.append(Outcome(stage, "skipped", "up to date"))
                continue
            outcome = self._run_one(stage, reason)
            outcomes.append(outcome)
            running = True
            halted = outcome.status != PASSED
        return outcomes

    def _run_one(self, stage: Stage, reason: str) -> Outcome:
        input_hash = self._input_hash(stage)
        log.info("stage start", stage=stage.label, reason=reason)
        self.state.record(stage, status=RUNNING, input_hash=input_hash)
        began = time.perf_counter()
        distributed.broadcast(("run", stage.name))
        try:
            self.leader.sharing = stage.shared and distributed.world().active
            with quiet_library_bars():  # transformers' own bars ("Loading weights") would repeat per load
                detail = stage.action(self.context)
            self.leader.sharing = False
        except Exception as exc:
            error = str(exc) if isinstance(exc, NexusError) else f"{type(exc).__name__}: {exc}"
            self.state.record(stage, status=FAILED, input_hash=input_hash, error=error)
            log.error("stage failed", stage=stage.label, error=error)
            raise
        seconds = time.perf_counter() - began
        outputs = _output_hashes(self.context.run_dir, stage)
        if outputs is None:
            missing = [o for o in stage.outputs if not (self.context.run_dir / o).is_file()]
            message = f"{stage.label} finished without writing {', '.join(missing)}"
            self.state.record(stage, status=FAILED, input_hash=input_hash, error=message)
            raise StageError(message)
        # Hashed again: a stage may create its own inputs (stage 1 builds the demo teachers it registers).
        self.state.record(stage, status=PASSED, input_hash=self._input_hash(stage), outputs=outputs,
                          seconds=round(seconds, 3), detail=detail)
        log.info("stage passed", stage=stage.label, seconds=round(seconds, 2), detail=detail)
        return Outcome(stage, PASSED, detail, seconds)
