"""Stages 5-7 end to end on the tiny demo teachers: the teacher-removal gate (and a student
that reads a teacher file failing it), the bundle, `nexus infer` with the teachers deleted,
the archive, the report, and sanitization that never leaves the run's roots."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from kernel_helpers import nexus

from nexus_kernel.algorithms.retention import THRESHOLD
from nexus_kernel.student.bundle import verify_bundle

pytestmark = pytest.mark.slow

CAPABILITIES = ["math", "reasoning", "vision", "voice"]
TEACHERS = {"math": "nexus-demo-math", "reasoning": "nexus-demo-reasoning", "vision": "nexus-demo-vision",
            "voice": "nexus-demo-voice"}


def _inputs(tmp_path: Path) -> dict[str, list[str]]:
    """One query per capability, in the form `nexus infer` takes."""
    from nexus_cap_vision.data import SyntheticRecipe as Pictures
    from nexus_cap_voice.data import SyntheticRecipe as Words
    from nexus_cap_voice.data import wav_bytes
    from PIL import Image

    picture = Pictures().test()[0]
    Image.fromarray(picture.image).save(tmp_path / "picture.png")
    (tmp_path / "word.wav").write_bytes(wav_bytes(Words().test()[0].samples))
    return {"math": ["Ann has 19 cards and buys 40 more. How many cards does Ann have now?"],
            "reasoning": ["In which range is 47?", "10 to 29", "30 to 49", "50 to 69", "70 to 99"],
            "vision": [str(tmp_path / "picture.png"), picture.question],
            "voice": [str(tmp_path / "word.wav")]}


def test_validate_package_infer_and_clean_up(finished_tiny_run: tuple[Path, Any], tmp_path: Path) -> None:
    project, result = finished_tiny_run  # cleanup.delete_user_teachers is on: --yes deletes them
    assert result.returncode == 0, result.stderr
    for line in ("5 validate      passed", "6 package       passed", "7 cleanup       passed", "capability  rank"):
        assert line in result.stdout
    run_dir = project / "runs/r"
    architecture = json.loads((run_dir / "architecture.json").read_text())

    verify = json.loads((run_dir / "verify_report.json").read_text())
    passes = verify["gate"]["passes"]
    assert [p["name"] for p in passes] == ["guarded", "teachers moved away"] and verify["gate"]["consistent"]
    assert sorted(Path(p).name for p in passes[1]["moved"]) == sorted(TEACHERS.values())
    assert all((project / "models" / name).is_dir() for name in TEACHERS.values())  # put back
    for name in CAPABILITIES:
        entry = verify["capabilities"][name]
        assert len(entry["student"]["per_item"]) == len(entry["teacher"]["per_item"]) == entry["student"]["n"]
        if entry["retention"]["ratio"] is None:  # two-step teachers near chance
            assert entry["retention"]["status"] == "not measurable"

    bundle = project / "bundles/nexus_bundle_v1"  # package.bundle_dir of the default config
    manifest = verify_bundle(bundle)
    for name in CAPABILITIES:
        packaged = manifest["capabilities"][name]
        assert packaged["rank"] == architecture["capabilities"][name]["rank"]
        assert packaged["modality"] == architecture["capabilities"][name]["modality"]
        assert packaged["tier"] in {"gold", "silver", "unverified"}
        assert manifest["requires"][f"nexus-cap-{name}"]
    assert {t["name"] for t in manifest["provenance"]["teachers"]} == set(TEACHERS.values())
    sizes = manifest["sizes"]
    assert sizes["ratio_to_fp32"] == sizes["bundle_bytes"] / sizes["fp32_student_bytes"] <= 0.35
    assert sizes["bundle_bytes"] == sum(f["bytes"] for n, f in manifest["files"].items())
    packaged_report = json.loads((bundle / "verify_report.json").read_text())
    assert set(packaged_report["quantized"]["capabilities"]) == set(CAPABILITIES)
    from safetensors import safe_open

    for name in CAPABILITIES:
        with safe_open(bundle / f"adapters/{name}.safetensors", "pt") as weights:
            assert not [key for key in weights.keys() if key.startswith("anchors.")]  # training-only state dropped

    html = (run_dir / "report.html").read_text()
    # Four matplotlib plots of a run whose stages all ran (none says "not run"), ticks labelled.
    assert re.findall(r'<figure id="(\w+)"><svg', html) == ["variance", "ranks", "losses", "retention"]
    assert "not run</text>" not in html and html.count('-xtick_1"') == html.count('-ytick_1"') == 4
    assert "rollbacks: " in html and "intrinsic dimension" in html and f"threshold {THRESHOLD}" in html
    with tarfile.open(run_dir / "archive/demo.tar.gz") as archive:
        names = archive.getnames()
    assert {f"demo/niwt_stage2_output/{name}/profile.json" for name in CAPABILITIES} <= set(names)
    assert "demo/bundle/manifest.json" in names and not [n for n in names if n.endswith("basis.safetensors")]
    dry = json.loads((run_dir / "cleanup_report.json").read_text())
    assert dry["dry_run"] and any("nexus-demo-math" in item["path"] for item in dry["would_delete"])
    assert all(Path(item["path"]).exists() or Path(item["path"]).is_symlink() for item in dry["would_delete"])

    # A student whose weights live in a teacher's folder fails the gate, naming the file.
    student = run_dir / "checkpoints/student.safetensors"
    # (A hidden name, which teacher fingerprints leave out, so stage 1 stays up to date for --only.)
    stolen = project / "models/nexus-demo-math/.student-copy.safetensors"
    shutil.move(student, stolen)
    student.symlink_to(stolen)
    failed = nexus("run", "--run-dir", "runs/r", "--only", "validate", cwd=project)
    assert failed.returncode != 0
    assert "teacher-removal gate FAILED (guarded)" in failed.stderr and str(stolen) in failed.stderr
    student.unlink()
    shutil.move(stolen, student)

    # Links out of the roots: sanitization removes the links, never what they point to.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    (project / "models/nexus-demo-voice/link-out").symlink_to(outside)
    (run_dir / "checkpoints/math/link-out.txt").symlink_to(outside / "keep.txt")
    cleaned = nexus("run", "--run-dir", "runs/r", "--yes", cwd=project)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "7 cleanup       passed" in cleaned.stdout
    assert (outside / "keep.txt").read_text() == "not the run's"
    assert not any((project / "models" / name).exists() for name in TEACHERS.values())
    assert student.is_file() and not (run_dir / "checkpoints/math").exists()
    assert json.loads((run_dir / "cleanup_report.json").read_text())["dry_run"] is False

    # The bundle answers with every teacher deleted.
    verify_bundle(bundle)
    for name, inputs in _inputs(tmp_path).items():
        answered = nexus("infer", str(bundle), "--capability", name, *inputs, cwd=project)
        assert answered.returncode == 0, answered.stderr
        if name == "reasoning":
            assert re.fullmatch(r"[ABCD]\) .+\n", answered.stdout)
        if name == "voice":
            assert re.fullmatch(r"\w+ \(cosine -?\d\.\d{3}\)\n", answered.stdout)
    wrong = nexus("infer", str(bundle), "--capability", "speech", "x", cwd=project)
    assert wrong.returncode == 2 and "no capability 'speech' in this bundle" in wrong.stderr
