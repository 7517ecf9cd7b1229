"""Stage -1 checks, run for real on this machine."""

from __future__ import annotations

import importlib.metadata as metadata

from nexus_kernel.stages import doctor


def test_examine_reports_torch_bitsandbytes_and_memory() -> None:
    report = doctor.examine(memory_budget_gb=1.0, device="cpu")
    checks = {check.name: check for check in report.checks}
    assert checks["torch"].detail.startswith(metadata.version("torch"))
    assert checks["device"].ok and report.device == "cpu"
    assert report.devices[0]["type"] == "cpu"
    assert report.ram_total_gb > 0 and 0 < report.ram_available_gb <= report.ram_total_gb
    assert checks["memory budget"].ok
    assert {"bitsandbytes nf4", "bitsandbytes int8"} <= checks.keys()
    assert report.bitsandbytes_schemes == [
        name.split()[-1] for name in ("bitsandbytes nf4", "bitsandbytes int8") if checks[name].ok]
    assert report.to_json()["ok"] is True


def test_a_budget_beyond_the_machine_is_a_warning() -> None:
    report = doctor.examine(memory_budget_gb=10_000.0, device="cpu")
    budget = next(check for check in report.checks if check.name == "memory budget")
    assert budget.level == "warning"
    assert "10000 GB asked but the RAM is" in budget.detail


def test_missing_required_package_says_how_to_install() -> None:
    check = doctor._package_check("nexus-no-such-package", "a purpose")
    assert (check.level, check.detail, check.fix) == (
        "error", "not installed (a purpose)", "pip install nexus-no-such-package")


def test_fingerprint_is_stable_and_tracks_its_inputs() -> None:
    assert doctor.fingerprint(16.0, "auto") == doctor.fingerprint(16.0, "auto")
    assert doctor.fingerprint(16.0, "auto") != doctor.fingerprint(8.0, "auto")
