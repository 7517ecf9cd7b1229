"""Helpers for the kernel's tests: fake installed distributions and CLI runs."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]

CAPABILITY_PLUGINS = ("knowledge", "math", "reasoning", "vision", "voice")
"""The capability plugins this repository ships (`nexus_cap_<name>`); all but knowledge have a
demo teacher in the default CSV."""

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


# Two training steps and a handful of held-out items: real architectures, built in seconds.
_TINY_RECIPES = {
    "math": {"plan": {"steps": 2}, "data": {"test_size": 4}},
    "reasoning": {"plan": {"steps": 2}, "data": {"test_size": 4, "dev_size": 1}},
    "voice": {"plan": {"steps": 2}, "data": {"train_speakers": 2, "test_speakers": 1, "takes": 1}},
    "vision": {"plan": {"steps": 2}, "data": {"test_size": 4}},
}

TINY_DISTILL = """
# Tests: a few steps of each distillation phase on a small pool.
[distill]
adapter_steps = 6
joint_steps = 6
pool_size = 48
batch_size = 8
eval_samples = 8
checkpoint_every = 3
check_every = 3
"""


def add_settings(config: Path, snippet: str) -> None:
    """Merge the TOML `snippet` into the config file `config`: each `[table]` the file already
    declares gets the snippet's keys right under its header (TOML forbids declaring a table
    twice, and the default config declares some), replacing a key it already sets there; the
    other tables are appended."""
    text = config.read_text()
    groups: dict[str, list[str]] = {}
    table = ""
    for line in snippet.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            table = stripped
            groups.setdefault(table, [])
        elif stripped and not stripped.startswith("#"):
            assert table, f"a key outside any table in the snippet: {line!r}"
            groups[table].append(stripped)
    lines = text.splitlines()
    for table, keys in groups.items():
        if table in (line.strip() for line in lines):
            at = [line.strip() for line in lines].index(table) + 1
            end = next((i for i in range(at, len(lines)) if lines[i].strip().startswith("[")), len(lines))
            given = {key.split("=", 1)[0].strip() for key in keys}
            lines[at:end] = [*keys, *(line for line in lines[at:end]
                                      if line.split("=", 1)[0].strip() not in given or "=" not in line)]
        else:
            lines += ["", table, *keys]
    config.write_text("\n".join(lines) + "\n")


def require_plugins(*modules: str) -> dict[str, ModuleType]:
    """Import each of `modules` (default: every shipped capability plugin), skipping the test
    when one is not installed: only end-to-end tests of the shipped plugins call this, so the
    kernel's own tests run whatever is installed (STYLE.md point 7)."""
    wanted = modules or tuple(f"nexus_cap_{name}" for name in CAPABILITY_PLUGINS)
    return {name: pytest.importorskip(name, reason=f"{name} is not installed; this test runs the "
                                      "shipped plugins end to end") for name in wanted}


def build_tiny_demo_teachers(root: Path) -> Path:
    """The four demo teachers' architectures, each trained for two steps, in `root/<name>`.

    Each build starts from its recipe's seed, as stage 1's worker does: the same bytes in
    every pytest session, whatever ran before it in the process."""
    from nexus_kernel.run.seeding import seed_everything

    require_plugins()
    for capability, overrides in _TINY_RECIPES.items():
        demo = importlib.import_module(f"nexus_cap_{capability}.teacher").demo()
        recipe = {key: {**value, **overrides.get(key, {})} if isinstance(value, dict) else value
                  for key, value in demo.recipe.items()}
        folder = root / demo.name
        folder.mkdir(parents=True)
        seed_everything(int(recipe.get("seed", 0)))
        demo.build(folder, recipe, lambda steps: None)
    return root


def tiny_project(root: Path, teachers: Path) -> Path:
    """A copy of the default configs in `root`, with tiny distillation settings
    (`TINY_DISTILL`); returns `root`.

    Each teacher the CSV names is a copy of a tiny (two-step) build of its demo teacher from
    `teachers`, as a user's folder (no demo marker), so runs use real stages but never train
    for long."""
    shutil.copytree(REPO / "configs", root / "configs")
    add_settings(root / "configs/nexus.toml", TINY_DISTILL)
    csv_path = root / "configs/ModelName-Parameters-Category-BestFeature.csv"
    for row in csv.DictReader(csv_path.read_text().splitlines()):
        shutil.copytree(teachers / row["Model Name"], root / "models" / row["Model Name"])
    return root


def file_hashes(folder: Path, pattern: str = "*") -> dict[str, str]:
    """sha256 of every file under `folder` matching `pattern` (hidden ones included), by
    relative POSIX path."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob(pattern)) if path.is_file()}


MATRIX_STAGES = ("doctor", "lock", "registry", "profile", "architecture", "distill", "validate", "package")
"""The stages a class-matrix run goes through (`--to package`)."""
TINY_PROFILE_AND_STUDENT = """
[profiling]
probe_samples = 4
samples = 32
key_layers = 2
batch_size = 8

[student]
hidden_size = 32
layers = 2
heads = 2
intermediate_size = 64
max_positions = 256
"""
"""The profiling and student tables of the class matrices' tiny runs."""


def record_stage_times(table: Path, times: dict[str, dict[str, float]], name: str, state: dict) -> None:
    """Add run `name`'s per-stage seconds (from its `state.json`) to `times`, write them all to
    `table` (JSON) and print them as a table (seen with `pytest -s`)."""
    times[name] = {stage: state["stages"][stage].get("seconds", 0.0) for stage in MATRIX_STAGES}
    table.write_text(json.dumps(times, indent=2))
    header = "class".ljust(20) + "".join(stage[:8].rjust(9) for stage in MATRIX_STAGES) + "    total"
    rows = [row.ljust(20) + "".join(f"{seconds[s]:9.2f}" for s in MATRIX_STAGES) + f"{sum(seconds.values()):9.2f}"
            for row, seconds in times.items()]
    print("\n" + "\n".join([header, *rows]))
