"""Stage 2 end to end: raw activations are never stored, and bad teachers fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kernel_helpers import add_settings, nexus

pytestmark = pytest.mark.slow

_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _math_only(project: Path, samples: int) -> None:
    csv_path = project / "configs/ModelName-Parameters-Category-BestFeature.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([rows[0], *(r for r in rows if r.startswith("nexus-demo-math"))]) + "\n")
    config = project / "configs/nexus.toml"
    config.write_text(config.read_text().replace('enabled = []', 'enabled = ["math"]'))
    add_settings(config, f"[profiling]\nsamples = {samples}\nbatch_size = 100\n")


def _profile_run(project: Path, run_dir: str) -> int:
    """Run the pipeline in a fresh process and return that process's peak RSS in KiB."""
    command = [sys.executable, "-m", "nexus_kernel.cli", "run", "--run-dir", run_dir, "--to", "profile"]
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, *command], cwd=project,
                            capture_output=True, text=True, check=True)
    code, peak = map(int, result.stdout.split())
    assert code == 0, f"exit {code}"
    return peak


def _folder_bytes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ten_times_the_samples_stores_nothing_more(project: Path) -> None:
    _math_only(project, 300)
    small_peak = _profile_run(project, "runs/small")
    config = project / "configs/nexus.toml"
    config.write_text(config.read_text().replace("samples = 300", "samples = 3000"))
    large_peak = _profile_run(project, "runs/large")
    small = _folder_bytes(project / "runs/small/niwt_stage2_output")
    large = _folder_bytes(project / "runs/large/niwt_stage2_output")
    assert set(small) == set(large) == {"math/basis.safetensors", "math/profile.json", "summary.json"}
    assert small["math/basis.safetensors"] == large["math/basis.safetensors"]
    assert abs(sum(large.values()) - sum(small.values())) < 0.01 * sum(small.values())
    profiles = [json.loads((project / f"runs/{run}/niwt_stage2_output/math/profile.json").read_text())
                for run in ("small", "large")]
    vectors = [sum(layer["vectors"] for layer in p["layers"].values()) for p in profiles]
    assert vectors[1] > 9 * vectors[0], vectors  # the large run really streamed ten times more
    print(f"\npeak RSS {small_peak} KiB -> {large_peak} KiB ({large_peak / small_peak - 1:+.1%}); vectors {vectors}; bytes {sum(small.values())} -> {sum(large.values())}")
    assert large_peak < 1.10 * small_peak, (small_peak, large_peak)


def test_a_corrupt_teacher_is_named_and_nothing_is_half_written(project: Path) -> None:
    weights = project / "models/nexus-demo-voice/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = nexus("run", cwd=project)
    assert result.returncode == 2
    assert "error: teacher 'nexus-demo-voice': " in result.stderr
    assert "model.safetensors is not a readable safetensors file" in result.stderr
    output = project / "runs/demo/niwt_stage2_output"
    assert not (output / "summary.json").exists()
    assert not list(output.rglob("*.tmp"))
    assert not (output / "voice").exists()
