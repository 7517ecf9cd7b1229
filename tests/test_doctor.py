"""Stage -1's logic on made-up machines (`Facts`), never on the machine running the tests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nexus_kernel.config import load_config
from nexus_kernel.errors import EnvironmentCheckError
from nexus_kernel.kit.testing import plugin_set_of
from nexus_kernel.run.runner import RunContext
from nexus_kernel.stages import doctor

GIB = 1024**3
HEALTHY = doctor.Facts(
    python=(3, 11, 7),
    packages={"torch": "2.13.0+cpu", "transformers": "4.50.0", "safetensors": "0.5.0", "accelerate": "1.5.0",
              "numpy": "2.1.0", "bitsandbytes": "0.45.0"},
    tools={"ffmpeg": "/usr/bin/ffmpeg"},
    ram_total_bytes=32 * GIB,
    ram_available_bytes=20 * GIB,
    cpu={"name": "x86_64", "cores": 8},
)
GPU = {"name": "Fake GPU", "memory_total_gb": 24.0, "memory_free_gb": 23.5}


def works(scheme: str, device: str) -> None:
    return None


def _context(tmp_path: Path, budget: float = 4.0, device: str = "auto") -> RunContext:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "nexus.toml"
    source.write_text(f'[hardware]\nmemory_budget_gb = {budget}\ndevice = "{device}"\n')
    return RunContext(tmp_path / "run", load_config(source), plugin_set_of())


def _run(tmp_path: Path, facts: doctor.Facts, probe: doctor.Probe = works, **hardware: object) -> str:
    return doctor.run_doctor(_context(tmp_path, **hardware), lambda: facts, probe)  # type: ignore[arg-type]


def _env(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run/env.json").read_text())


def test_a_healthy_machine_passes_and_env_json_says_so(tmp_path: Path) -> None:
    assert _run(tmp_path, HEALTHY) == "device cpu, budget 4 GB, 0 warnings"
    env = _env(tmp_path)
    assert env["ok"] is True and env["device"] == "cpu" and env["bitsandbytes_schemes"] == ["nf4", "int8"]
    assert env["devices"] == [{"type": "cpu", "name": "x86_64", "cores": 8}]
    assert {check["name"]: check["ok"] for check in env["checks"]} == {
        "python": True, "torch": True, "transformers": True, "safetensors": True, "accelerate": True,
        "numpy": True, "device": True, "memory budget": True, "bitsandbytes": True, "bitsandbytes nf4": True,
        "bitsandbytes int8": True, "ffmpeg": True}


def test_a_missing_required_package_fails_the_stage_naming_it_and_its_fix(tmp_path: Path) -> None:
    facts = dataclasses.replace(HEALTHY, packages={**HEALTHY.packages, "transformers": None})
    with pytest.raises(EnvironmentCheckError) as caught:
        _run(tmp_path, facts)
    assert str(caught.value) == ("required pieces are missing:\n"
                                 "  - transformers: not installed (teacher and student models); "
                                 "fix: pip install transformers")
    assert _env(tmp_path)["ok"] is False


def test_an_old_python_and_a_missing_torch_are_both_named(tmp_path: Path) -> None:
    facts = dataclasses.replace(HEALTHY, python=(3, 10, 12), packages={**HEALTHY.packages, "torch": None})
    with pytest.raises(EnvironmentCheckError) as caught:
        _run(tmp_path, facts)
    message = str(caught.value)
    assert "  - python: 3.10.12; fix: use Python 3.11 or newer" in message
    assert "  - torch: not installed; fix: pip install torch==2.13.0" in message
    assert "device" not in message  # without torch no device is chosen, so none is blamed


def test_cuda_asked_on_a_machine_without_it_fails_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentCheckError, match=r"  - device: hardware.device = 'cuda' but torch sees no "
                                                    r"CUDA device; fix: set hardware.device = 'auto' or 'cpu'"):
        _run(tmp_path, HEALTHY, device="cuda")


def test_auto_takes_the_gpu_and_measures_the_budget_against_its_memory(tmp_path: Path) -> None:
    facts = dataclasses.replace(HEALTHY, cuda=(GPU,), torch_build="CUDA 12.4")
    assert _run(tmp_path, facts, budget=30.0) == "device cuda, budget 30 GB, 1 warnings"
    budget = next(check for check in _env(tmp_path)["checks"] if check["name"] == "memory budget")
    assert budget["ok"] is False and budget["detail"] == "30 GB asked but the GPU memory is 24.0 GB"


def test_a_budget_beyond_the_ram_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    report = doctor.examine_facts(HEALTHY, memory_budget_gb=64.0, device="cpu", probe=works)
    budget = next(check for check in report.checks if check.name == "memory budget")
    assert (budget.level, budget.detail) == ("warning", "64 GB asked but the RAM is 32.0 GB")
    assert not report.missing


def test_a_bitsandbytes_scheme_that_fails_its_forward_pass_is_left_out(tmp_path: Path) -> None:
    def int8_broken(scheme: str, device: str) -> str | None:
        return "RuntimeError: no int8 kernel" if scheme == "int8" else None

    report = doctor.examine_facts(HEALTHY, device="cpu", probe=int8_broken)
    assert report.bitsandbytes_schemes == ["nf4"]
    int8 = next(check for check in report.checks if check.name == "bitsandbytes int8")
    assert (int8.level, int8.detail) == ("warning", "RuntimeError: no int8 kernel")
    assert not report.missing


def test_an_unpinned_torch_and_a_missing_tool_are_warnings(tmp_path: Path) -> None:
    facts = dataclasses.replace(HEALTHY, packages={**HEALTHY.packages, "torch": "2.5.0"}, tools={"ffmpeg": None})
    report = doctor.examine_facts(facts, device="cpu", probe=works)
    assert [(c.name, c.detail) for c in report.warnings] == [
        ("torch", "2.5.0 (CPU build); Nexus is tested on 2.13.0"),
        ("ffmpeg", "not on PATH (voice files other than WAV)")]
    assert not report.missing


def test_env_json_leaves_out_readings_that_change_from_moment_to_moment(tmp_path: Path) -> None:
    facts = dataclasses.replace(HEALTHY, cuda=(GPU,))
    _run(tmp_path / "a", facts)
    later = dataclasses.replace(facts, ram_available_bytes=3 * GIB, cuda=({**GPU, "memory_free_gb": 1.0},))
    _run(tmp_path / "b", later)
    assert (tmp_path / "a/run/env.json").read_bytes() == (tmp_path / "b/run/env.json").read_bytes()


DESCRIPTION = {"python": "3.11.7", "platform": "Linux-6.1", "cuda_visible_devices": None,
               "ram_total_bytes": 32 * GIB, "tools": {"ffmpeg": "/usr/bin/ffmpeg"},
               "packages": dict(HEALTHY.packages)}


def test_a_tool_no_code_uses_does_not_change_the_fingerprint() -> None:
    with_espeak = {**DESCRIPTION, "tools": {**DESCRIPTION["tools"], "espeak-ng": "/usr/bin/espeak-ng"}}
    with_package = {**DESCRIPTION, "packages": {**DESCRIPTION["packages"], "requests": "2.32.0"}}
    assert doctor.fingerprint(16.0, "auto", with_espeak) == doctor.fingerprint(16.0, "auto", DESCRIPTION)
    assert doctor.fingerprint(16.0, "auto", with_package) == doctor.fingerprint(16.0, "auto", DESCRIPTION)


def test_what_the_run_depends_on_changes_the_fingerprint() -> None:
    base = doctor.fingerprint(16.0, "auto", DESCRIPTION)
    without_ffmpeg = {**DESCRIPTION, "tools": {"ffmpeg": None}}
    other_torch = {**DESCRIPTION, "packages": {**DESCRIPTION["packages"], "torch": "2.14.0"}}
    assert doctor.fingerprint(16.0, "auto", without_ffmpeg) != base
    assert doctor.fingerprint(16.0, "auto", other_torch) != base
    assert doctor.fingerprint(8.0, "auto", DESCRIPTION) != base
    assert doctor.fingerprint(16.0, "cpu", DESCRIPTION) != base


def test_this_machines_description_has_what_the_fingerprint_reads() -> None:
    described = doctor.describe_environment()
    assert doctor.fingerprint(16.0, "auto") == doctor.fingerprint(16.0, "auto", described)
    assert set(described["tools"]) == set(doctor.TOOLS) and set(described["packages"]) == set(doctor.PACKAGES)
