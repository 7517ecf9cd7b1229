"""Helpers for the kernel's tests: fake installed distributions and CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HANG_GUARD = 1800.0
"""Seconds after which a subprocess of a test counts as hung. Sized for a 2-core machine busy
with other work (a test must not fail for being slow; speed is measured in benchmarks/)."""


def install_fake_distribution(
    site: Path, distribution: str, module: str, source: str, entry_name: str | None = None
) -> Path:
    """Make `distribution` importable from `site` as if pip-installed: a module plus a
    `.dist-info` with an entry point of group `nexus`. Put `site` on PYTHONPATH to use it."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{distribution.replace('-', '_')}-0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.9\n")
    (info / "entry_points.txt").write_text(f"[nexus]\n{entry_name or module} = {module}\n")
    return site


def nexus(*args: str, cwd: Path, extra_path: Path | None = None,
          env: dict[str, str] | None = None, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess[str]:
    """Run the installed `nexus` command in a subprocess."""
    environment = {k: v for k, v in os.environ.items() if k != "NEXUS_PLUGINS"}
    environment.update(env or {})
    if extra_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(extra_path), environment.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "nexus_kernel.cli", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)



def fake_demo_build(folder: Path, recipe: dict, progress):
    """A demo-teacher build for tests: writes one file, reports every step, and scores the
    recipe's `score` (so a test can make it fall below the minimum). With a `validation` key
    it returns a `DemoBuildResult` whose training record validated at that score against
    the recipe's `validation_target`; without, the scores alone (a build with no rounds)."""
    from nexus_kernel import Score
    from nexus_kernel.contracts import DemoBuildResult

    for _ in range(recipe["steps"]):
        progress(1)
    (folder / "config.json").write_text(json.dumps({"recipe": recipe}))
    scores = {"toy": Score.from_items("toy", [recipe["score"]], 0.0)}
    if "validation" not in recipe:
        return scores
    target = recipe["validation_target"]
    training = {"steps": recipe["steps"], "target": target, "reached": recipe["validation"] >= target,
                "rounds": [{"steps": recipe["steps"], "score": recipe["validation"]}]}
    return DemoBuildResult(scores, training)


def run_and_kill_when(args: list[str], cwd: Path, reached: Callable[[], bool], what: str,
                      extra_path: Path | None = None, env: dict[str, str] | None = None,
                      timeout: float = HANG_GUARD, poll: float = 0.01) -> None:
    """Start `nexus <args>` and SIGKILL it as soon as `reached()` is true; fails if the run
    ends first or `what` is not reached within `timeout` seconds."""
    import signal
    import time

    environment = {k: v for k, v in os.environ.items() if k != "NEXUS_PLUGINS"}
    environment.update(env or {})
    if extra_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), environment.get("PYTHONPATH")]))
    process = subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", *args], cwd=cwd, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not reached():
        assert process.poll() is None, f"nexus run ended before {what}"
        assert time.monotonic() < deadline, f"{what} was not reached in time"
        time.sleep(poll)
    process.send_signal(signal.SIGKILL)
    process.wait()
