"""Stage -1: is this machine able to run Nexus, and with what memory budget?

The machine is read once into `Facts` (`observe()`); `examine_facts` judges them, so the
logic is tested on made-up machines. `fingerprint()` is cheap (no heavy imports) and decides
whether the stage must run again; it and `env.json` hold only what a run depends on (no
tool that no code uses, no free-memory reading), so neither changes when the machine
changes in a way no stage sees.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import psutil

from nexus_kernel.errors import EnvironmentCheckError
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.run.layout import ENV_FILE
from nexus_kernel.run.logs import get_logger
from nexus_kernel.run.runner import RunContext

PINNED_TORCH = "2.13.0"
REQUIRED_PACKAGES = {
    "transformers": "teacher and student models",
    "safetensors": "every weight file",
    "accelerate": "quantized loading of teachers",
    "numpy": "data and metrics",
}
PACKAGES = ("torch", *REQUIRED_PACKAGES, "bitsandbytes")
"""The distributions whose versions the run depends on (and the fingerprint covers)."""
TOOLS = {"ffmpeg": "voice files other than WAV"}
"""Optional system tools some code runs (the voice plugin reads non-WAV audio with ffmpeg).
A tool no code uses does not belong here: installing it would rerun every stage."""
BNB_SCHEMES = ("nf4", "int8")
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

    def to_json(self, readings: bool = True) -> dict[str, Any]:
        """The report as JSON; without `readings`, the free-memory readings that change from
        one moment to the next are left out (what `env.json`, which later stages hash, holds)."""
        data = asdict(self)
        data["ok"] = not self.missing
        if not readings:
            del data["ram_available_gb"]
            for found in data["devices"]:
                found.pop("memory_free_gb", None)
        return data


@dataclass(frozen=True)
class Facts:
    """What stage -1 reads about the machine (`observe()` reads this one).

    `packages` maps each of `PACKAGES` to its installed version (None: not installed), `tools`
    each of `TOOLS` to its path (None: not on PATH). `cuda` lists the CUDA devices torch sees
    (`name`, `memory_total_gb`, `memory_free_gb`); `torch_build` is "CPU" or "CUDA <version>".
    """

    python: tuple[int, int, int]
    packages: Mapping[str, str | None]
    tools: Mapping[str, str | None]
    ram_total_bytes: int
    ram_available_bytes: int
    torch_build: str = "CPU"
    cuda: tuple[Mapping[str, Any], ...] = ()
    cpu: Mapping[str, Any] = field(default_factory=dict)


Probe = Callable[[str, str], "str | None"]
"""`(scheme, device) -> None` when a bitsandbytes layer of that scheme runs a forward pass on
`device`, else why not."""


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict[str, Any]:
    """The cheap part of the machine's description (no torch import), for `fingerprint`."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "tools": {tool: shutil.which(tool) for tool in TOOLS},
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ram_total_bytes": psutil.virtual_memory().total,
    }


def fingerprint(memory_budget_gb: float, device: str, description: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """What the environment check depends on: of `description` (default: this machine's
    `describe_environment()`), only the keys, packages and tools a run depends on."""
    described = describe_environment() if description is None else description
    return {
        "python": described["python"],
        "platform": described["platform"],
        "packages": {name: described["packages"].get(name) for name in PACKAGES},
        "tools": {tool: described["tools"].get(tool) for tool in TOOLS},
        "cuda_visible_devices": described["cuda_visible_devices"],
        "ram_total_bytes": described["ram_total_bytes"],
        "memory_budget_gb": memory_budget_gb,
        "device": device,
    }


def observe() -> Facts:
    """This machine's `Facts` (imports torch when it is installed)."""
    memory = psutil.virtual_memory()
    packages = {name: _version(name) for name in PACKAGES}
    build, cuda = "CPU", ()
    if packages["torch"] is not None:
        import torch

        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
        if torch.cuda.is_available():
            cuda = tuple(_cuda_device(index) for index in range(torch.cuda.device_count()))
    return Facts(python=tuple(sys.version_info[:3]),  # type: ignore[arg-type]
                 packages=packages, tools={tool: shutil.which(tool) for tool in TOOLS},
                 ram_total_bytes=memory.total, ram_available_bytes=memory.available, torch_build=build,
                 cuda=cuda, cpu={"name": platform.processor() or platform.machine(), "cores": os.cpu_count()})


def _cuda_device(index: int) -> dict[str, Any]:
    import torch

    free, total = torch.cuda.mem_get_info(index)
    return {"name": torch.cuda.get_device_name(index), "memory_total_gb": round(total / _GIB, 2),
            "memory_free_gb": round(free / _GIB, 2)}


def probe_bitsandbytes(scheme: str, device: str) -> str | None:
    """Quantize a small layer with bitsandbytes on `device` and run one forward pass."""
    import torch

    try:
        import bitsandbytes as bnb

        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        if scheme == "nf4":
            layer = bnb.nn.Linear4bit(64, 64, quant_type="nf4", compute_dtype=torch.float32)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
        output = layer.to(device)(torch.randn(2, 64, device=device))
        if tuple(output.shape) != (2, 64) or not torch.isfinite(output).all():
            return "forward pass gave a wrong or non-finite result"
        return None
    except Exception as exc:  # bitsandbytes raises many kinds of errors per backend
        return f"{type(exc).__name__}: {exc}"


# judging the facts -------------------------------------------------------------------------------


def _package_check(distribution: str, purpose: str, version: str | None = None) -> Check:
    if version is None:
        return Check(distribution, False, True, f"not installed ({purpose})",
                     fix=f"pip install {distribution}")
    return Check(distribution, True, True, version)


def _torch_check(facts: Facts) -> Check:
    version = facts.packages.get("torch")
    if version is None:
        return Check("torch", False, True, "not installed",
                     fix=f"pip install torch=={PINNED_TORCH} (install it first: it pins the CPU build)")
    if version.split("+")[0] != PINNED_TORCH:
        return Check("torch", False, False, f"{version} ({facts.torch_build} build); Nexus is tested on {PINNED_TORCH}",
                     fix=f"pip install torch=={PINNED_TORCH}")
    return Check("torch", True, True, f"{version} ({facts.torch_build} build)")


def _bitsandbytes_checks(facts: Facts, device: str, probe: Probe) -> list[Check]:
    version = facts.packages.get("bitsandbytes")
    if version is None:
        return [Check("bitsandbytes", False, False, "not installed; teachers load unquantized",
                      fix="pip install bitsandbytes (or pip install plugins/nexus-quant-bnb)")]
    checks = [Check("bitsandbytes", True, False, version)]
    for scheme in BNB_SCHEMES:
        failure = probe(scheme, device)
        checks.append(Check(f"bitsandbytes {scheme}", True, False, f"works on {device}") if failure is None else
                      Check(f"bitsandbytes {scheme}", False, False, failure,
                            fix="the run falls back to the next quantization option"))
    return checks


def _choose_device(wanted: str, has_cuda: bool) -> tuple[str, Check]:
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


def _tool_check(tool: str, purpose: str, path: str | None) -> Check:
    if path is None:
        return Check(tool, False, False, f"not on PATH ({purpose})", fix=f"apt-get install -y {tool}")
    return Check(tool, True, False, path)


def examine_facts(facts: Facts, memory_budget_gb: float = 16.0, device: str = "auto",
                  probe: Probe = probe_bitsandbytes) -> EnvironmentReport:
    """Judge `facts`. Required: Python >= 3.11, torch, transformers, safetensors, accelerate,
    numpy and the asked-for device. Optional: bitsandbytes (each scheme tried with `probe`
    on the chosen device), the `TOOLS`, a budget within the machine's memory."""
    report = EnvironmentReport(memory_budget_gb=memory_budget_gb)
    python_ok = facts.python >= (3, 11)
    report.checks.append(Check("python", python_ok, True, ".".join(map(str, facts.python)),
                               fix="" if python_ok else "use Python 3.11 or newer"))
    report.checks.append(_torch_check(facts))
    for distribution, purpose in REQUIRED_PACKAGES.items():
        report.checks.append(_package_check(distribution, purpose, facts.packages.get(distribution)))
    report.ram_total_gb = round(facts.ram_total_bytes / _GIB, 2)
    report.ram_available_gb = round(facts.ram_available_bytes / _GIB, 2)
    if facts.packages.get("torch") is not None:
        report.device, device_check = _choose_device(device, bool(facts.cuda))
        report.devices = [{"type": "cpu", **facts.cpu},
                          *({"type": "cuda", "index": index, **found} for index, found in enumerate(facts.cuda))]
        report.checks.append(device_check)
        report.checks.append(_budget_check(memory_budget_gb, report.device, report))
        bnb_checks = _bitsandbytes_checks(facts, report.device, probe)
        report.checks.extend(bnb_checks)
        report.bitsandbytes_schemes = [check.name.split()[-1] for check in bnb_checks[1:] if check.ok]
    for tool, purpose in TOOLS.items():
        report.checks.append(_tool_check(tool, purpose, facts.tools.get(tool)))
    return report


def examine(memory_budget_gb: float = 16.0, device: str = "auto") -> EnvironmentReport:
    """`examine_facts` on this machine."""
    return examine_facts(observe(), memory_budget_gb, device)


def doctor_inputs(context: RunContext) -> dict[str, Any]:
    hardware = context.config.section("hardware")
    return fingerprint(hardware["memory_budget_gb"], hardware["device"])


def run_doctor(context: RunContext, observed: Callable[[], Facts] = observe,
               probe: Probe = probe_bitsandbytes) -> str:
    """Stage -1: examine the machine (`observed()`), write `env.json`, fail naming every
    missing required piece and its fix."""
    hardware = context.config.section("hardware")
    report = examine_facts(observed(), hardware["memory_budget_gb"], hardware["device"], probe)
    atomic_write_json(context.run_dir / ENV_FILE, report.to_json(readings=False))
    log.info("environment", ram_available_gb=report.ram_available_gb,
             memory_free_gb=[d["memory_free_gb"] for d in report.devices if "memory_free_gb" in d])
    for check in report.warnings:
        log.warning("environment", check=check.name, detail=check.detail, fix=check.fix)
    if report.missing:
        lines = "\n".join(f"  - {c.name}: {c.detail}; fix: {c.fix}" for c in report.missing)
        raise EnvironmentCheckError(f"required pieces are missing:\n{lines}")
    return f"device {report.device}, budget {report.memory_budget_gb:g} GB, {len(report.warnings)} warnings"
