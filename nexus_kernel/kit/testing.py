"""Test helpers for Nexus and for authors of third-party plugins (a pytest plugin).

Installed with `nexus-kernel` under the `pytest11` entry point, so its fixtures are available in
any project that has the kernel installed:

- `nexus_run_dir`: an empty run directory in a temporary folder.
- `nexus_plugin_set`: a factory building a `PluginSet` from plugin objects you pass, with no
  entry-point discovery, so a test never depends on what happens to be installed.

and `check_capability_plugin(plugin)`, the conformance check every capability plugin runs
against itself, and `shared_data(subfolder, __file__)`, which finds the real benchmark samples
or skips the test with the reason.
"""

from __future__ import annotations

import importlib.metadata as metadata
import math
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from nexus_kernel.capability import Capability
from nexus_kernel.contracts import DemoTeacher, ProbePlan
from nexus_kernel.errors import PluginError
from nexus_kernel.kit.plugin_kit import CapabilityPlugin, check_module
from nexus_kernel.plugins import BUILTINS, ENTRY_POINT_GROUP, PluginRecord, PluginSet, new_manager
from nexus_kernel.run.fsio import canonical_json


class ConformanceError(AssertionError):
    """A capability plugin breaks the plugin contract; the message says which rule."""


def plugin_module(name: str = "test_plugin", **hooks: Any) -> ModuleType:
    """A plugin for a test: a module object named `name` holding `hooks` (functions marked
    with `nexus_kernel.hookimpl`), as an entry point pointing at a module would load it."""
    module = ModuleType(name)
    vars(module).update(hooks)
    return module


def plugin_set_of(*plugins: tuple[str, object],
                  builtins: Sequence[tuple[str, object]] = BUILTINS) -> PluginSet:
    """A `PluginSet` holding `(name, plugin)` pairs, each as if installed as `test-<name>`,
    over the kernel's built-in defaults (or the `builtins` given)."""
    plugin_set = PluginSet(new_manager(builtins), builtin_names=tuple(name for name, _ in builtins))
    for name, plugin in plugins:
        plugin_set.add(PluginRecord(name, f"test-{name}", "0", repr(plugin)), plugin)
    return plugin_set


def _entry_point_targets(distribution: str) -> list[object]:
    """What each of the installed `distribution`'s `nexus` entry points loads."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ConformanceError(f"distribution {distribution!r} is not installed") from None
    return [ep.load() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]


def _imports_torch(module_name: str) -> bool:
    probe = f"import sys, {module_name}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if result.returncode not in (0, 3):
        raise ConformanceError(f"importing {module_name} failed:\n{result.stderr}")
    return result.returncode == 3


def _check_datasets(plugin_set: PluginSet, capability: Capability) -> None:
    """`resolve_datasets` without a `data_dir` (a capability with no synthetic data may refuse
    that with a `NexusError`) and with an existing one."""
    import tempfile

    from nexus_kernel.errors import NexusError

    try:
        answer = plugin_set.call_for(capability.name, "resolve_datasets", capability=capability,
                                     settings={"max_rank": None, "data_dir": None})
    except NexusError:
        with tempfile.TemporaryDirectory() as folder:
            answer = plugin_set.call_for(capability.name, "resolve_datasets", capability=capability,
                                         settings={"max_rank": None, "data_dir": folder})
    if answer is None:
        return
    if not answer or not all(isinstance(k, str) and isinstance(v, str) for k, v in answer.items()):
        raise ConformanceError(f"{capability.name}: resolve_datasets must map split names to "
                               f"paths or 'synthetic:<label>' strings, got {answer!r}")


def _check_demo_teacher(plugin_set: PluginSet, capability: Capability) -> None:
    demo = plugin_set.call_for(capability.name, "demo_teacher", capability=capability,
                               settings={"max_rank": None, "data_dir": None})
    if demo is None:
        return
    problems = []
    if not isinstance(demo, DemoTeacher):
        raise ConformanceError(f"{capability.name}: demo_teacher must return a DemoTeacher, got {demo!r}")
    if demo.capability != capability.name:
        problems.append(f"its capability is {demo.capability!r}")
    if not demo.name or "/" in demo.name or demo.name.startswith("."):
        problems.append(f"its name {demo.name!r} is not a plain folder name")
    if demo.benchmark not in capability.benchmarks:
        problems.append(f"its benchmark {demo.benchmark!r} is not one of {capability.benchmarks}")
    if demo.steps < 1 or not 0 < demo.minimum <= 1:
        problems.append("steps must be >= 1 and minimum in (0, 1]")
    try:
        canonical_json(dict(demo.recipe))
    except (TypeError, ValueError) as exc:
        problems.append(f"its recipe is not plain JSON ({exc})")
    try:
        pickle.dumps(demo.build)
    except Exception as exc:  # any pickling failure means it cannot run in a worker process
        problems.append(f"its build function cannot run in a worker process ({exc}); "
                        "make it a module-level function")
    if problems:
        raise ConformanceError(f"{capability.name}: demo_teacher: " + "; ".join(problems))


def _home_module(plugin: object) -> str:
    """The name of the module a plugin is, or the first imported module that holds it."""
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    for name, module in list(sys.modules.items()):
        if any(value is plugin for value in list(vars(module).values())) and not name.startswith("__"):
            return name
    raise ConformanceError(f"{plugin!r} is held by no imported module; an entry point cannot name it")


def _check_modules(plugin: CapabilityPlugin) -> None:
    """Both modules against their protocols, afresh (not the plugin's checked-once cache)."""
    import importlib

    try:
        for name, role in ((plugin.teacher_module_name, "teacher"), (plugin.student_module_name, "student")):
            check_module(importlib.import_module(name), role, plugin.capability.name)
    except PluginError as exc:
        raise ConformanceError(str(exc)) from None
    except ImportError as exc:
        raise ConformanceError(f"{plugin!r}: {exc}") from None


def check_capability_plugin(plugin: object, distribution: str | None = None) -> list[Capability]:
    """Check `plugin` (a `CapabilityPlugin`, or a module of `@hookimpl` functions) against the
    plugin contract and return the capabilities it declares.

    Rules: every hook names a real hook with valid arguments; `register_capabilities` returns
    `Capability` specs, at least one, none twice; importing the module holding the plugin does
    not import torch (plugins import heavy modules lazily); a `CapabilityPlugin`'s teacher and
    student modules import and provide what `TeacherModule` and `StudentModule` name
    (`demo`, `probe_plan`, `distill_plan`, `score`, `answer`, and `projector`, `assets`,
    `reference` when present), with those parameter names; `resolve_datasets` maps split names
    to strings; `demo_teacher` gives a recipe that is plain JSON, a benchmark the capability
    declares and a build function a worker process can run; and, when `distribution` is given,
    that distribution is installed with an entry point of group `nexus` that loads this very
    plugin object.
    """
    home = _home_module(plugin)
    try:
        plugin_set = plugin_set_of((home, plugin))
        record = plugin_set.loaded[0]
    except Exception as exc:
        raise ConformanceError(f"{home} does not register: {type(exc).__name__}: {exc}") from exc
    if not record.capabilities:
        raise ConformanceError(f"{home}: register_capabilities declares no capability")
    if _imports_torch(home):
        raise ConformanceError(f"importing {home} imports torch; import it inside functions")
    if distribution is not None and not any(target is plugin for target in _entry_point_targets(distribution)):
        raise ConformanceError(f"{distribution} has no entry point of group {ENTRY_POINT_GROUP!r} that loads "
                               f"{plugin!r} (point it at \"{home}:<name of the object>\")")
    if isinstance(plugin, CapabilityPlugin):
        _check_modules(plugin)
    for capability in record.capabilities:
        _check_datasets(plugin_set, capability)
        _check_demo_teacher(plugin_set, capability)
    return list(record.capabilities)


SHARED_DATA_ENV = "NEXUS_SHARED_DATA"


def shared_data(subfolder: str, anchor: str | Path) -> Path:
    """The folder `shared/data/<subfolder>` of real benchmark samples: under `$NEXUS_SHARED_DATA`
    when set, else in the nearest `shared/data` beside a parent of `anchor` (pass `__file__`).
    When it is absent, the calling test is skipped with the reason."""
    import os

    roots = [Path(os.environ[SHARED_DATA_ENV])] if os.environ.get(SHARED_DATA_ENV) else [
        parent / "shared" / "data" for parent in Path(anchor).resolve().parents]
    for root in roots:
        if (root / subfolder).is_dir():
            return root / subfolder
    pytest.skip(f"real data sample shared/data/{subfolder} is absent (it sits beside the "
                f"repository in CI; set {SHARED_DATA_ENV} to point at it)")


@pytest.fixture
def nexus_run_dir(tmp_path: Path) -> Path:
    """An empty run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir


@pytest.fixture
def nexus_plugin_set() -> Callable[..., PluginSet]:
    """`nexus_plugin_set(("name", plugin), ...)` builds a PluginSet from those plugins only."""
    return plugin_set_of


def tiny_causal_teacher(folder: Path, words: Iterable[str] = ()) -> Path:
    """Save an untrained two-block LLaMA-style teacher and its tokenizer (the kernel's word and
    character tokenizer over `words`) into `folder`, for tests of hooks that need a teacher."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.student.decoding import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(words)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=256)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def check_probe_plan(model: Any, plan: ProbePlan, n_probe: int, stream_samples: int = 24) -> dict[str, Any]:
    """Drive a plugin's `ProbePlan` through the kernel's ablation and streaming profile and
    check what stage 2 relies on: the probe batches hold `n_probe` samples, every candidate
    layer exists and gets a finite ablated loss, and each layer's streamed PCA counts one row per
    real token (per position when the plan has no mask). Returns the PCA states by layer."""
    from nexus_kernel.algorithms.profiling import (
        profile_layers,
        rank_layers_by_ablation,
    )

    def samples(batch: Any) -> int:
        if plan.samples_of is not None:
            return int(plan.samples_of(batch))
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        return int(first.shape[0])

    if sum(samples(batch) for batch in plan.batches) != n_probe:
        raise ConformanceError(f"probe batches hold {sum(samples(b) for b in plan.batches)} samples, not {n_probe}")
    if not plan.candidate_layers:
        raise ConformanceError("the plan names no candidate layer")
    ablation = rank_layers_by_ablation(model, plan.candidate_layers, plan.batches, plan.loss)
    if sorted(ablation.ranking()) != sorted(plan.candidate_layers):
        raise ConformanceError("ablation did not rank every candidate layer")
    if not all(math.isfinite(loss) for loss in [ablation.baseline, *ablation.ablated.values()]):
        raise ConformanceError(f"non-finite loss under ablation: {ablation}")
    streamed = list(plan.stream(stream_samples, 8))
    if sum(samples(batch) for batch in streamed) != stream_samples:
        raise ConformanceError(f"stream({stream_samples}, 8) did not yield {stream_samples} samples")
    return profile_layers(model, plan.candidate_layers, streamed, plan.loss, plan.mask_of)


def check_text_probe_plan(teacher_module: ModuleType, words: Iterable[str], folder: Path) -> dict[str, Any]:
    """`check_probe_plan` for a text plugin: builds `tiny_causal_teacher(folder, words)`, asks
    `teacher_module.probe_plan` for a plan over the synthetic data, and checks that each layer's
    PCA counted exactly the real (unpadded) tokens."""
    from nexus_kernel.teachers.loading import load_teacher_folder

    loaded = load_teacher_folder("tiny", tiny_causal_teacher(folder, words), "fp32")
    plan = teacher_module.probe_plan(loaded, 20, {"train": "synthetic:any", "test": "synthetic:any"})
    states = check_probe_plan(loaded.model, plan, 20)
    tokens = sum(int(plan.mask_of(batch).sum()) for batch in plan.stream(24, 8))
    if any(state.count != tokens for state in states.values()):
        raise ConformanceError(f"streamed rows {[s.count for s in states.values()]} != {tokens} real tokens")
    return states
