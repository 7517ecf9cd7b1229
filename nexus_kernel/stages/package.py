"""Stage 6, packaging: quantize the student, re-score it, and write the bundle.

The stage-4 student loses its training-only state (anchor projections; the optimizer state
and PCA bases never were part of it), then its backbone and adapters are quantized through
the `quantize` hook (`[package] scheme`, INT8 by default; the kernel's fallback when no plugin
answers). Each owner's `package_assets` adds what its capability needs at inference. The
bundle is first written to a staging folder in the run directory, loaded back with
`load_bundle` (checksums, strict state) and scored on the same held-out items as stage 5:
retention after quantization must hold too. Only then is it written to `[package] bundle_dir`
with `manifest.json` (capabilities with rank, modality and tier, required distributions,
teacher provenance, sizes, every file's sha256) and `verify_report.json` (both retention
tables). The size is checked against `[package] max_fp32_ratio` and `max_size_gb`.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from nexus_kernel.algorithms.retention import (
    THRESHOLD,
    failing,
    retention_table,
    score_capabilities,
    summary_line,
)
from nexus_kernel.errors import StageError
from nexus_kernel.run.fsio import atomic_write_json, canonical_json
from nexus_kernel.run.layout import (
    ARCHITECTURE_FILE,
    LOCK_FILE,
    PACKAGE_REPORT,
    REGISTRY_FILE,
    STAGING,
    STUDENT_FILE,
    VERIFY_REPORT,
    bundle_folder,
)
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.progress import progress, quiet_library_bars
from nexus_kernel.run.runner import RunContext
from nexus_kernel.student.bundle import write_bundle
from nexus_kernel.student.model import StudentCapability
from nexus_kernel.student.packaging import (
    Bundle,
    drop_training_state,
    export_files,
    fp32_bytes,
    load_bundle,
    quantize_student,
    student_section,
)
from nexus_kernel.teachers.binding import bound_capability

TIERS = ((0.99, "gold"), (THRESHOLD, "silver"))

log = get_logger("package")


def tier(result: dict[str, Any]) -> str:
    """The retention band: gold (>= 0.99), silver (>= 0.97), below, or unverified."""
    if result["ratio"] is None:
        return "unverified"
    return next((name for floor, name in TIERS if result["ratio"] >= floor), "below")


def _distribution_of(context: RunContext, plugin_name: str) -> tuple[str, str]:
    if plugin_name == "nexus-kernel":
        return "nexus-kernel", metadata.version("nexus-kernel")
    record = next(r for r in context.plugins.loaded if r.name == plugin_name)
    return record.distribution, record.version


def _score(bundle: Bundle, datasets: dict[str, Any], limit: int, run_dir: Path) -> dict[str, Any]:
    """The loaded bundle's scores, one capability at a time (in `score_capabilities`' order),
    with a bar over them and a line for each."""
    names = sorted(bundle.capabilities)
    scores: dict[str, Any] = {}
    with torch.inference_mode(), progress(len(names), "re-scoring the quantized student", "capability") as bar:
        for done, name in enumerate(names, start=1):
            started = time.perf_counter()
            scores |= score_capabilities(bundle.plugins, [name], bundle.model, datasets, limit, run_dir)
            bar.update(1)
            log.info("quantized student scored", capability=name, capabilities=f"{done}/{len(names)}",
                     seconds=round(time.perf_counter() - started, 1))
    return scores


def _assets(context: RunContext, student: Any, datasets: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    assets = {}
    with torch.inference_mode():
        for name in sorted(student.adapters):
            found = context.plugins.call_for(name, "package_assets", capability=bound_capability(context.plugins, context.run_dir, name),
                                             model=StudentCapability(student, name), datasets=datasets[name])
            if found:
                assets[name] = {key: value.detach().float().contiguous() for key, value in found.items()}
    return assets


def _manifest(context: RunContext, architecture: dict[str, Any], quantized: dict[str, Any], student: Any,
              scheme: str, quantizers: dict[str, str], sizes: dict[str, Any]) -> dict[str, Any]:

    registry = {e["name"]: e for e in json.loads((context.run_dir / REGISTRY_FILE).read_text())["teachers"]}
    requires = dict(_distribution_of(context, q) for q in sorted(set(quantizers.values())))
    requires["nexus-kernel"] = metadata.version("nexus-kernel")
    capabilities = {}
    for name, item in sorted(architecture["capabilities"].items()):
        record = context.plugins.owner_of(name)
        requires[record.distribution] = record.version
        result = quantized[name]["retention"]
        capabilities[name] = {
            "plugin": record.distribution, "modality": item["modality"], "rank": item["rank"],
            "output": item["adapter"]["output"], "benchmark": quantized[name]["benchmark"],
            "tier": tier(result), "retention": result["ratio"], "interval": result["interval"],
            "teacher": item["teacher"],
        }
    teachers = [{"name": entry["name"], "capability": entry["capability"], "parameters": entry["parameters"],
                 "category": entry["category"]} for entry in registry.values()
                if entry["name"] in {item["teacher"] for item in architecture["capabilities"].values()}]
    return {"name": "nexus_bundle_v1", "run": context.config.section("run")["name"],
            "capabilities": capabilities, "requires": dict(sorted(requires.items())),
            "provenance": {"teachers": teachers, "student_parameters": architecture["parameters"]},
            "sizes": sizes, "student": student_section(student, scheme, quantizers)}


def run_package(context: RunContext) -> str:
    """Stage 6 (see the module docstring)."""
    from nexus_kernel.student.build import build_student
    from nexus_kernel.student.weights import load_weights

    settings = context.config.section("package")
    verify = json.loads((context.run_dir / VERIFY_REPORT).read_text())
    if verify.get("status") != "passed":
        raise StageError(f"{context.run_dir / VERIFY_REPORT}: stage 5 did not pass; nothing is packaged")
    architecture = json.loads((context.run_dir / ARCHITECTURE_FILE).read_text())
    datasets = json.loads((context.run_dir / LOCK_FILE).read_text())["datasets"]
    torch.set_num_threads(context.config.section("distill")["threads"])
    with quiet_library_bars():
        student = build_student(context, architecture)
    load_weights(student, context.run_dir / STUDENT_FILE)
    student.eval()
    drop_training_state(student)
    reference = fp32_bytes(student)
    scheme = settings["scheme"]
    quantizers = quantize_student(student, context.plugins, scheme)
    log.info("quantized", scheme=scheme, quantizers=quantizers)
    files = export_files(student, _assets(context, student, datasets))
    staging = context.run_dir / STAGING
    write_bundle(staging, files, {"student": student_section(student, scheme, quantizers),
                                  "capabilities": {n: {} for n in architecture["capabilities"]}})
    loaded = load_bundle(staging, context.plugins)
    quantized = retention_table(context.run_dir, _score(loaded, datasets, context.config.section("distill")["eval_samples"],
                                                            context.run_dir))
    report = {**verify, "quantized": {"scheme": scheme, "quantizers": quantizers, "capabilities": quantized,
                                      "status": "failed" if failing(quantized) else "passed"}}
    files["verify_report.json"] = canonical_json(report).encode()
    weights = sum(len(data) for name, data in files.items() if name.endswith(".safetensors"))
    total = sum(len(data) for data in files.values())  # every file but the manifest
    sizes = {"bundle_bytes": total, "weights_bytes": weights, "fp32_student_bytes": reference,
             "ratio_to_fp32": total / reference, "weights_ratio_to_fp32": weights / reference,
             "max_fp32_ratio": settings["max_fp32_ratio"], "max_size_gb": settings["max_size_gb"]}
    problems = []
    if failing(quantized):
        problems.append(f"retention after {scheme} quantization below {THRESHOLD} x teacher for "
                        f"{', '.join(failing(quantized))} ({summary_line(quantized)})")
    if sizes["ratio_to_fp32"] > settings["max_fp32_ratio"]:
        problems.append(f"the bundle is {sizes['ratio_to_fp32']:.3f} x the fp32 student, above package.max_fp32_ratio "
                        f"{settings['max_fp32_ratio']}")
    if total > settings["max_size_gb"] * 1e9:
        problems.append(f"the bundle is {total / 1e9:.2f} GB, above package.max_size_gb {settings['max_size_gb']}")
    package_report = {"status": "failed" if problems else "passed", "problems": problems, "sizes": sizes,
                      "scheme": scheme, "quantizers": quantizers, "quantized": quantized}
    if problems:
        atomic_write_json(context.run_dir / PACKAGE_REPORT, package_report)
        raise StageError("; ".join(problems) + f"; no bundle written (staging copy in {staging})")
    folder = bundle_folder(context.run_dir, context.config)
    manifest = write_bundle(folder, files, _manifest(context, architecture, quantized, student, scheme, quantizers, sizes))
    shutil.rmtree(staging, ignore_errors=True)
    package_report |= {"bundle": str(folder), "bundle_bytes": total + (folder / "manifest.json").stat().st_size,
                       "tiers": {name: item["tier"] for name, item in manifest["capabilities"].items()}}
    atomic_write_json(context.run_dir / PACKAGE_REPORT, package_report)
    return (f"{folder} ({total / 1e6:.2f} MB, {sizes['ratio_to_fp32']:.2f} x the fp32 student, {scheme}); "
            f"retention after quantization {summary_line(quantized)}")


def bundle_still_valid(context: RunContext) -> str | None:
    """Stage 6 reruns when its bundle is missing or fails verification."""
    from nexus_kernel.student.bundle import BundleError, verify_bundle

    try:
        verify_bundle(bundle_folder(context.run_dir, context.config))
    except BundleError as exc:
        return f"bundle missing or modified ({exc})"
    return None
