"""Stage 2, profiling (NIWT): per capability, load its teacher quantized, rank candidate layers
by mean-ablation on the probe samples, stream the key layers' activations through streaming
PCA, and audit the intrinsic dimension against the capability's max rank. For the teacher the
student is cut from (`student.backbone = "teacher:<capability>"`), also rank its blocks by what
removing each one costs, greedily (`removal` in `profile.json`: the cut keeps the costliest).

Writes `niwt_stage2_output/<capability>/basis.safetensors` (per key layer: mean, components,
eigenvalues) and `profile.json` (quantization used and why, ablation table, key layers, batch
size and measured memory, intrinsic dimensions, participation ratios, rank audit). One teacher
is in memory at a time; no activation outlives its batch. Under torchrun every rank loads the
teacher and ranks the layers on the same probe batches; the streamed samples are sharded
(`profile_layers`), and only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
import torch

from nexus_kernel.algorithms.profiling import (
    AblationResult,
    RemovalResult,
    profile_layers,
    rank_layers_by_ablation,
    rank_layers_by_removal,
    removal_trials,
)
from nexus_kernel.config import SCHEMA
from nexus_kernel.errors import StageError
from nexus_kernel.run.distributed import barrier, process_budget, world
from nexus_kernel.run.fsio import atomic_write_bytes, atomic_write_json
from nexus_kernel.run.layout import LOCK_FILE, PROFILE_DIR, PROFILE_SUMMARY, REGISTRY_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import progress, quiet_library_bars
from nexus_kernel.run.runner import RunContext
from nexus_kernel.run.settings import CapabilitySettings, locked_settings
from nexus_kernel.teachers.access import TeacherSession, by_teacher, run_device
from nexus_kernel.teachers.binding import bound_capability
from nexus_kernel.teachers.loading import AUTO, QUANTIZATION_ORDER, LoadedTeacher, choose_precision
from nexus_kernel.teachers.registry import TeacherEntry

_TRIAL_BATCH = 4
_MAX_BATCH = 256

log = get_logger("profile")


def _load_working(context: RunContext, name: str, capability: Any, entry: TeacherEntry,
                  datasets: dict[str, str], settings: dict[str, Any], session: TeacherSession
                  ) -> tuple[LoadedTeacher, Any]:
    """The teacher, loaded with the first quantization whose forward pass on a probe batch
    works (bitsandbytes can load a layer shape its CPU kernels then refuse), and its plan;
    loaded through `session`, so a teacher already loaded for another capability is reused. The
    first option tried is the configured one, or `choose_precision`'s for `auto` (its reason
    goes into `profile.json`'s `load.chosen`). Before each load the memory plan of the
    teacher's `config.json` must fit the budget (`_planned_option`)."""
    device = run_device(context)
    budget = process_budget(context.config.section("hardware")["memory_budget_gb"], device)
    skipped: dict[str, str] = {}
    preferred, chosen = settings["quantization"], ""
    walk = preferred == AUTO
    if walk:
        preferred, chosen = choose_precision(device, entry.parameters, budget)
    while True:
        preferred = _planned_option(entry, preferred, device, budget, settings, walk)
        walk = False
        teacher = _get_teacher(session, name, entry, preferred, device)
        skipped.update(teacher.skipped)
        plan = context.plugins.call_for(name, "profile_capability", capability=capability, teacher=teacher,
                                        n_probe=settings["probe_samples"], datasets=datasets)
        if plan is None:
            raise StageError(f"{name}: its plugin gives no probe plan (profile_capability returned None)")
        try:
            with torch.inference_mode():
                plan.loss(teacher.model, plan.batches[0])
        except Exception as exc:  # a backend's kernel refusing this model: try the next option
            if teacher.quantization == QUANTIZATION_ORDER[-1]:
                raise StageError(f"teacher {entry.name!r}: a forward pass fails even in fp32: "
                                 f"{type(exc).__name__}: {exc}") from exc
            skipped[teacher.quantization] = f"forward pass failed: {type(exc).__name__}: {exc}"
            preferred = QUANTIZATION_ORDER[QUANTIZATION_ORDER.index(teacher.quantization) + 1]
            del teacher, plan
            session.release()
            continue
        teacher.skipped, teacher.chosen = skipped, chosen
        return teacher, plan


def _get_teacher(session: TeacherSession, name: str, entry: TeacherEntry, preferred: str, device: str
                 ) -> LoadedTeacher:
    """`session.get`, with transformers' own bars off and a line before and after the load
    (its seconds, model class and parameters; or that the teacher was already in memory)."""
    loads, started = session.loads, time.perf_counter()
    log.info("loading teacher", capability=name, teacher=entry.name, quantization=preferred, device=device)
    with quiet_library_bars():
        teacher = session.get(entry, preferred, device)
    if session.loads == loads:
        log.info("teacher already loaded", capability=name, teacher=entry.name, quantization=teacher.quantization)
        return teacher
    counted = getattr(teacher.model, "num_parameters", None)  # transformers' counts 4-bit weights unpacked
    parameters = counted() if callable(counted) else sum(p.numel() for p in teacher.model.parameters())
    log.info("teacher loaded", capability=name, teacher=entry.name, seconds=round(time.perf_counter() - started, 1),
             model=type(teacher.model).__name__,
             parameters=f"{parameters / 1e6:,.1f}M" if parameters >= 100_000 else f"{parameters:,}",
             quantization=teacher.quantization)
    return teacher


def _planned_option(entry: TeacherEntry, option: str, device: str, budget_gb: float, settings: dict[str, Any],
                    walk: bool) -> str:
    """`option` when the teacher's memory plan for profiling (at the configured batch, else
    1, and `memory_plan.PRELOAD_WORKLOAD`) fits the budget; with `walk` (the `auto` choice)
    the first fitting option from it towards NF4. A plan that cannot fit raises
    `MemoryPlanError` before anything is loaded; a teacher with no `config.json` to plan
    from (a plugin's own format) is not checked."""
    from pathlib import Path

    from nexus_kernel.algorithms import memory_plan

    folder = Path(entry.path)
    if not (folder / "config.json").is_file():
        return option
    try:
        shape = memory_plan.describe(folder, entry.name)
    except memory_plan.MemoryPlanError:
        return option  # the loader reports what is wrong with the folder
    order = QUANTIZATION_ORDER[: QUANTIZATION_ORDER.index(option) + 1][::-1] if walk else (option,)
    found, _ = memory_plan.fitting_option(shape, order, lambda each: memory_plan.inference_plan(
        shape, each, settings["batch_size"] or 1, memory_plan.PRELOAD_WORKLOAD, device=device,
        key_layers=settings["key_layers"]), budget_gb)
    return found


def _output_bytes(model: torch.nn.Module, batch: Any, loss: Any) -> int:
    """The largest single module output of one forward pass over `batch`, in bytes: the
    activation that must fit next to the weights."""
    largest = [0]

    def measure(_module: Any, _inputs: Any, output: Any) -> None:
        tensors = [output] if isinstance(output, torch.Tensor) else [
            item for item in (output if isinstance(output, (tuple, list)) else ()) if isinstance(item, torch.Tensor)]
        largest[0] = max(largest[0], sum(t.numel() * t.element_size() for t in tensors))

    from nexus_kernel.algorithms.memory_plan import forward_hooked

    forward_hooked(model, loss, batch, [module.register_forward_hook(measure) for module in model.modules()])
    return largest[0]


def choose_batch_size(model: torch.nn.Module, plan: Any, budget_gb: float, fixed: int, *,
                      key_layers: int | None = None, option: str | None = None, device: str = "cpu",
                      teacher: str = "teacher") -> dict[str, Any]:
    """The profiling batch size, from the memory plan of `model`'s config (`memory_plan`) with
    the workload of the probe batch (`observe_workload`): `fixed` when set (a `MemoryPlanError`
    when that does not fit `budget_gb`), else the largest batch up to `_MAX_BATCH` that fits.
    A model the planner cannot build on meta falls back to measuring a trial batch and taking
    the largest batch whose activations (with a 4x allowance for the transient copies of a
    forward pass) fit a quarter of the memory budget. `batching` says which was used."""
    from nexus_kernel.algorithms import memory_plan

    key_layers = SCHEMA["profiling"]["key_layers"].default if key_layers is None else key_layers
    try:
        shape = memory_plan.plan_loaded(teacher, None, model)
    except Exception as exc:  # noqa: BLE001  (any config the planner cannot build: the measured trial instead)
        unplanned = f"{type(exc).__name__}: {exc}"
    else:
        option = option or memory_plan.loaded_option(model)
        probe = plan.batches[0]
        samples = plan.samples_of(probe) if plan.samples_of is not None else None
        workload = memory_plan.observe_workload(model, plan.loss, probe, samples or _rows(probe))

        def plan_at(batch: int) -> memory_plan.StagePlan:
            return memory_plan.inference_plan(shape, option, batch, workload, device=device, key_layers=key_layers)

        size = fixed or memory_plan.largest_fitting_batch(plan_at, budget_gb * memory_plan.BATCH_SHARE, _MAX_BATCH)
        memory_plan.check_fits(plan_at(max(1, size)), budget_gb, teacher)
        return {"batch_size": size, "chosen": "config" if fixed else "planner",
                "workload": workload.__dict__, "plan": plan_at(size).to_json(budget_gb)}
    if fixed:
        return {"batch_size": fixed, "chosen": "config", "planner": f"not planned ({unplanned})"}
    trial = next(iter(plan.stream(_TRIAL_BATCH, _TRIAL_BATCH)))
    per_sample = max(1, _output_bytes(model, trial, plan.loss) // _TRIAL_BATCH)
    allowance = budget_gb * 2**30 / 4
    size = int(max(1, min(_MAX_BATCH, allowance // (4 * per_sample))))
    return {"batch_size": size, "chosen": "measured", "planner": f"not planned ({unplanned})",
            "trial_batch": _TRIAL_BATCH, "largest_activation_bytes_per_sample": per_sample}


def _streamed(batches: Iterable[Any], advance: Callable[[int], Any], samples_of: Callable[[Any], int] | None
              ) -> Iterator[Any]:
    """`batches`, calling `advance` with each batch's samples once the consumer asks for the
    next one (so after the batch has been folded in)."""
    for batch in batches:
        yield batch
        advance(samples_of(batch) if samples_of is not None else _rows(batch))


def _rows(batch: Any) -> int:
    """The rows of a batch's first tensor (`ProbePlan.samples_of`'s default)."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else 1


def _rank_audit(capability: Any, max_rank: int, layers: dict[str, Any]) -> dict[str, Any]:
    """Intrinsic dim (the most demanding key layer), max rank, chosen rank, variance lost."""
    layer, worst = max(layers.items(), key=lambda item: item[1]["intrinsic_dim"])
    intrinsic = worst["intrinsic_dim"]
    rank = capability.choose_rank(intrinsic, max_rank)
    ratios = worst["explained_variance_ratio"]
    kept = float(sum(ratios[:rank]))
    return {"layer": layer, "intrinsic_dim": intrinsic, "max_rank": max_rank, "chosen_rank": rank,
            "variance_kept": kept, "variance_lost": max(0.0, 1.0 - kept), "truncated": intrinsic > rank}


def _table(result: AblationResult) -> dict[str, Any]:
    """An ablation or removal result as `profile.json` holds it; a null increase means the
    loss diverged (ranked first)."""
    return {"baseline_loss": result.baseline,
            "loss_increase": {layer: increase if math.isfinite(increase) else None
                              for layer, increase in result.increases().items()},
            "ranking": result.ranking()}


def _removal_table(result: RemovalResult) -> dict[str, Any]:
    """The removal ranking as `profile.json` holds it: the single-removal table, then each
    greedy round's block removed and the loss after it."""
    return {**_table(result.first), "ranking": result.ranking(),
            "greedy": [{"removed": layer, "loss": loss if math.isfinite(loss) else None}
                       for layer, loss in zip(result.removed, result.losses, strict=True)]}


def removal_rounds(context: RunContext, blocks: int) -> int:
    """Greedy removal rounds for the teacher the student is cut from: one per block the cut
    drops (`blocks - student.keep_layers`), at most `profiling.removal_rounds`; 1 (the
    single-removal ranking) when it drops none."""
    keep = context.config.section("student")["keep_layers"]
    dropped = blocks - keep if 0 < keep < blocks else 0
    return max(1, min(dropped, context.config.section("profiling")["removal_rounds"]))


def cut_source(context: RunContext) -> str | None:
    """The capability whose teacher the student is cut from (`student.backbone = "teacher:<capability>"`):
    stage 2 also measures, for that teacher only, what removing each block costs."""
    from nexus_kernel.student.build import teacher_source

    return teacher_source(context.config.section("student"))


def profile_capability(context: RunContext, name: str, entry: TeacherEntry, datasets: dict[str, str],
                       locked: CapabilitySettings, session: TeacherSession) -> dict[str, Any]:
    """Profile one capability's teacher (loaded through `session`) and write its outputs;
    returns `profile.json`'s data."""
    from safetensors.torch import save

    settings = context.config.section("profiling")
    capability = bound_capability(context.plugins, context.run_dir, name)
    max_rank = locked.max_rank
    out = context.run_dir / PROFILE_DIR / name
    started = time.perf_counter()
    teacher, plan = _load_working(context, name, capability, entry, datasets, settings, session)
    try:
        layers_started, candidates = time.perf_counter(), len(plan.candidate_layers)
        with progress(candidates, f"{name}: ablating layers", "layer") as bar:
            ablation = rank_layers_by_ablation(teacher.model, plan.candidate_layers, plan.batches, plan.loss,
                                               teacher=entry.name, progress=bar.update)
        key_layers = ablation.ranking()[: settings["key_layers"]]
        log.info("layers ranked by ablation", capability=name, layers=f"{len(ablation.ablated)}/{candidates}",
                 probe_batches=len(plan.batches), key_layers=key_layers,
                 seconds=round(time.perf_counter() - layers_started, 1))
        removal = None
        if cut_source(context) == name:
            rounds = removal_rounds(context, candidates)
            layers_started, trials = time.perf_counter(), removal_trials(candidates, rounds)
            with progress(trials, f"{name}: removing blocks", "trial") as bar:
                removal = rank_layers_by_removal(teacher.model, plan.candidate_layers, plan.batches, plan.loss,
                                                 teacher=entry.name, rounds=rounds, progress=bar.update)
            log.info("blocks ranked by removal", capability=name, trials=trials, rounds=rounds,
                     seconds=round(time.perf_counter() - layers_started, 1))
        device = run_device(context)
        batching = choose_batch_size(teacher.model, plan,
                                     process_budget(context.config.section("hardware")["memory_budget_gb"], device),
                                     settings["batch_size"], key_layers=settings["key_layers"],
                                     option=teacher.quantization, device=device, teacher=entry.name)
        process = psutil.Process()
        peak = [process.memory_info().rss]

        def sample_memory() -> None:
            peak[0] = max(peak[0], process.memory_info().rss)

        streaming_started, streamed = time.perf_counter(), [0, 0]  # samples, batches
        with progress(settings["samples"], f"{name}: streaming activations", "sample") as bar:
            def advance(samples: int) -> None:
                streamed[0] += samples
                streamed[1] += 1
                bar.update(samples)

            batches = _streamed(plan.stream(settings["samples"], batching["batch_size"]), advance, plan.samples_of)
            states = profile_layers(teacher.model, key_layers, batches, plan.loss, plan.mask_of, teacher=entry.name,
                                    on_batch=sample_memory, world=world())
            if streamed[0] < settings["samples"]:  # the data ran out first: the bar ends where it did
                bar.total = streamed[0]
                bar.refresh()
        log.info("activations streamed", capability=name, samples=f"{streamed[0]}/{settings['samples']}",
                 batches=streamed[1], layers=len(key_layers),
                 seconds=round(time.perf_counter() - streaming_started, 1))
        batching["peak_rss_mb"] = round(peak[0] / 2**20, 1)
        log.info("profiling batches", capability=name, **batching)
    finally:
        model_quantization = teacher.describe()
        del teacher
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    for layer, state in states.items():
        result = state.result()
        keep = min(max_rank, len(result.eigenvalues))
        tensors[f"{layer}.mean"] = result.mean.float().contiguous()
        tensors[f"{layer}.components"] = result.components[:keep].float().contiguous()
        tensors[f"{layer}.eigenvalues"] = result.eigenvalues[:keep].float().contiguous()
        layers[layer] = {
            "vectors": result.count, "dim": int(result.mean.numel()),
            "intrinsic_dim": result.intrinsic_dim(settings["variance_threshold"]),
            "participation_ratio": result.participation_ratio,
            "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio[:keep]],
        }
    audit = _rank_audit(capability, max_rank, layers)
    if audit["truncated"]:
        log.warning("rank audit truncates", capability=name, intrinsic_dim=audit["intrinsic_dim"],
                    max_rank=max_rank, variance_lost=round(audit["variance_lost"], 4))
    profile = {
        "capability": name, "teacher": entry.name, "load": model_quantization,
        "probe_samples": settings["probe_samples"], "samples": settings["samples"],
        "ablation": _table(ablation),
        **({"removal": _removal_table(removal)} if removal is not None else {}),
        "key_layers": key_layers, "batching": batching, "variance_threshold": settings["variance_threshold"],
        "layers": layers, "rank_audit": audit, "seconds": round(time.perf_counter() - started, 2),
    }
    if world().main:
        atomic_write_bytes(out / "basis.safetensors", save(tensors))
        atomic_write_json(out / "profile.json", profile)
    return profile


def run_profile(context: RunContext) -> str:
    """Stage 2 over every capability that has a teacher, one teacher in memory at a time."""

    registry = json.loads((context.run_dir / REGISTRY_FILE).read_text())
    lock = json.loads((context.run_dir / LOCK_FILE).read_text())
    locked = locked_settings(context.run_dir)
    teachers = {}
    for data in registry["teachers"]:
        entry = TeacherEntry.from_json(data)
        if entry.capability in teachers:
            log.warning("several teachers for one capability; profiling the first",
                        capability=entry.capability, used=teachers[entry.capability].name, ignored=entry.name)
            continue
        teachers[entry.capability] = entry
    lines = {}
    summary = {}
    with TeacherSession(context) as session:
        profiles = {name: profile_capability(context, name, teachers[name], lock["datasets"][name], locked[name],
                                             session)
                    for name in by_teacher(teachers)}
    log.info("teachers loaded", loads=session.loads, teachers=len({entry.path for entry in teachers.values()}))
    for name, entry in sorted(teachers.items()):
        profile = profiles[name]
        audit = profile["rank_audit"]
        summary[name] = {"teacher": entry.name, "quantization": profile["load"]["quantization"],
                         "key_layers": profile["key_layers"], "rank_audit": audit}
        lines[name] = (f"{name}: {profile['load']['quantization']}, key {', '.join(profile['key_layers'])}, "
                       f"dim {audit['intrinsic_dim']} -> rank {audit['chosen_rank']}")
        log.info("profiled", capability=name, **{k: v for k, v in audit.items() if k != "layer"})
    if world().main:
        atomic_write_json(context.run_dir / PROFILE_SUMMARY, summary)
    barrier()  # the other ranks go on only once the leader's files are written
    return "; ".join(lines.values()) or "no capability has a teacher"


def profile_inputs(context: RunContext) -> dict[str, Any]:
    return {"profiling": context.config.section("profiling"),
            "memory_budget_gb": context.config.section("hardware")["memory_budget_gb"],
            "cut_source": cut_source(context),
            "keep_layers": context.config.section("student")["keep_layers"] if cut_source(context) else None}
