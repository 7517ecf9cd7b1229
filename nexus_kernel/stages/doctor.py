"""Stage -1: is this machine able to run Nexus, and with what memory budget?

`fingerprint()` is cheap (no heavy imports) and decides whether the stage must run again;
`examine()` does the real checks, including a forward pass through bitsandbytes' 4-bit and
8-bit layers on the chosen device.
"""

from __future__ import annotations

import importlib.metadata as metadata
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from nexus_kernel.errors import EnvironmentCheckError
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.run.layout import ENV_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.runner import RunContext

PINNED_TORCH = "2.13.0"
_GIB = 1024**3

log = get_logger("pipeline")


@dataclass(frozen=True)
class Check:
    """One finding. A failed `required` check stops the run; a failed optional one warns."""

    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""

    @property
    def level(self) -> str:
        if self.ok:
            return "ok"
        return "error" if self.required else "warning"


@dataclass
class EnvironmentReport:
    """What `nexus doctor` prints and stage -1 writes to `env.json`."""

    checks: list[Check] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    ram_total_gb: float = 0.0
    ram_available_gb: float = 0.0
    memory_budget_gb: float = 0.0
    bitsandbytes_schemes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[Check]:
        return [check for check in self.checks if check.level == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.level == "warning"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = not self.missing
        return data


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(memory_budget_gb: float, device: str) -> dict[str, Any]:
    """Everything the environment check depends on, read without importing torch."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: _version(name)
            for name in ("torch", "transformers", "safetensors", "accelerate", "numpy",
                         "bitsandbytes")
        },
        "tools": {tool: shutil.which(tool) for tool in ("ffmpeg", "espeak-ng")},
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ram_total_bytes": psutil.virtual_memory().total,
        "memory_budget_gb": memory_budget_gb,
        "device": device,
    }


def _package_check(distribution: str, purpose: str) -> Check:
    version = _version(distribution)
    if version is None:
        return Check(distribution, False, True, f"not installed ({purpose})",
                     fix=f"pip install {distribution}")
    return Check(distribution, True, True, version)


def _torch_check() -> Check:
    version = _version("torch")
    if version is None:
        return Check("torch", False, True, "not installed",
                     fix=f"pip install torch=={PINNED_TORCH} (install it first: it pins the CPU build)")
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    if version.split("+")[0] != PINNED_TORCH:
        return Check("torch", False, False, f"{version} ({build} build); Nexus is tested on {PINNED_TORCH}",
                     fix=f"pip install torch=={PINNED_TORCH}")
    return Check("torch", True, True, f"{version} ({build} build)")


def _devices() -> list[dict[str, Any]]:
    import torch

    found: list[dict[str, Any]] = [{"type": "cpu", "name": platform.processor() or platform.machine(),
                                    "cores": os.cpu_count()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            found.append({"type": "cuda", "index": index, "name": torch.cuda.get_device_name(index),
                          "memory_total_gb": round(total / _GIB, 2),
                          "memory_free_gb": round(free / _GIB, 2)})
    return found


def _bnb_path(name: str, build: Callable[[Any, Any], Any], device: str) -> Check:
    """Quantize a small layer with bitsandbytes on `device` and run one forward pass."""
    import torch

    try:
        import bitsandbytes as bnb

        layer = build(bnb, torch).to(device)
        output = layer(torch.randn(2, 64, device=device))
        if tuple(output.shape) != (2, 64) or not torch.isfinite(output).all():
            return Check(name, False, False, "forward pass gave a wrong or non-finite result")
        return Check(name, True, False, f"works on {device}")
    except Exception as exc:  # bitsandbytes raises many kinds of errors per backend
        return Check(name, False, False, f"{type(exc).__name__}: {exc}",
                     fix="the run falls back to the next quantization option")


def _bitsandbytes_checks(device: str) -> list[Check]:
    if _version("bitsandbytes") is None:
        return [Check("bitsandbytes", False, False, "not installed; teachers load unquantized",
                      fix="pip install bitsandbytes (or pip install plugins/nexus-quant-bnb)")]
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    four_bit = _bnb_path("bitsandbytes nf4", lambda bnb, torch: bnb.nn.Linear4bit(
        64, 64, quant_type="nf4", compute_dtype=torch.float32), device)
    eight_bit = _bnb_path("bitsandbytes int8", lambda bnb, torch: bnb.nn.Linear8bitLt(
        64, 64, has_fp16_weights=False), device)
    return [Check("bitsandbytes", True, False, _version("bitsandbytes") or ""), four_bit, eight_bit]


def _choose_device(wanted: str) -> tuple[str, Check]:
    import torch

    has_cuda = torch.cuda.is_available()
    if wanted == "cuda" and not has_cuda:
        return "cpu", Check("device", False, True, "hardware.device = 'cuda' but torch sees no CUDA device",
                            fix="set hardware.device = 'auto' or 'cpu', or install a CUDA build of torch")
    chosen = "cuda" if wanted == "cuda" or (wanted == "auto" and has_cuda) else "cpu"
    return chosen, Check("device", True, True, chosen)


def _budget_check(budget_gb: float, device: str, report: EnvironmentReport) -> Check:
    if device == "cuda":
        limit = min(d["memory_total_gb"] for d in report.devices if d["type"] == "cuda")
        where = "GPU memory"
    else:
        limit = report.ram_total_gb
        where = "RAM"
    if budget_gb > limit:
        return Check("memory budget", False, False,
                     f"{budget_gb:g} GB asked but the {where} is {limit:.1f} GB",
                     fix="lower hardware.memory_budget_gb")
    return Check("memory budget", True, True, f"{budget_gb:g} GB of {limit:.1f} GB {where}")


def _tool_check(tool: str, purpose: str) -> Check:
    path = shutil.which(tool)
    if path is None:
        return Check(tool, False, False, f"not on PATH ({purpose})", fix=f"apt-get install -y {tool}")
    return Check(tool, True, False, path)


def examine(memory_budget_gb: float = 16.0, device: str = "auto") -> EnvironmentReport:
    """Run every check. Required pieces: Python >= 3.11, torch, transformers, safetensors,
    accelerate, numpy and the asked-for device. Optional: bitsandbytes, ffmpeg, espeak-ng."""
    report = EnvironmentReport(memory_budget_gb=memory_budget_gb)
    python_ok = sys.version_info >= (3, 11)
    report.checks.append(Check("python", python_ok, True, platform.python_version(),
                               fix="" if python_ok else "use Python 3.11 or newer"))
    torch_check = _torch_check()
    report.checks.append(torch_check)
    for distribution, purpose in (("transformers", "teacher and student models"),
                                  ("safetensors", "every weight file"),
                                  ("accelerate", "quantized loading of teachers"),
                                  ("numpy", "data and metrics")):
        report.checks.append(_package_check(distribution, purpose))
    memory = psutil.virtual_memory()
    report.ram_total_gb = round(memory.total / _GIB, 2)
    report.ram_available_gb = round(memory.available / _GIB, 2)
    if _version("torch") is not None:
        report.device, device_check = _choose_device(device)
        report.devices = _devices()
        report.checks.append(device_check)
        report.checks.append(_budget_check(memory_budget_gb, report.device, report))
        bnb_checks = _bitsandbytes_checks(report.device)
        report.checks.extend(bnb_checks)
        report.bitsandbytes_schemes = [
            check.name.split()[-1] for check in bnb_checks[1:] if check.ok
        ]
    report.checks.append(_tool_check("ffmpeg", "voice files other than WAV"))
    report.checks.append(_tool_check("espeak-ng", "spoken demo data; numpy audio is used without it"))
    return report


def doctor_inputs(context: RunContext) -> dict[str, Any]:
    hardware = context.config.section("hardware")
    return fingerprint(hardware["memory_budget_gb"], hardware["device"])


def run_doctor(context: RunContext) -> str:
    hardware = context.config.section("hardware")
    report = examine(hardware["memory_budget_gb"], hardware["device"])
    atomic_write_json(context.run_dir / ENV_FILE, report.to_json())
    for check in report.warnings:
        log.warning("environment", check=check.name, detail=check.detail, fix=check.fix)
    if report.missing:
        lines = "\n".join(f"  - {c.name}: {c.detail}; fix: {c.fix}" for c in report.missing)
        raise EnvironmentCheckError(f"required pieces are missing:\n{lines}")
    return f"device {report.device}, budget {report.memory_budget_gb:g} GB, {len(report.warnings)} warnings"
