"""The bundle format: checksums written atomically, and every way a bundle is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from kernel_helpers import nexus

from nexus_kernel.run.fsio import sha256_bytes
from nexus_kernel.student.bundle import (
    MANIFEST,
    BundleError,
    replace_folder,
    verify_bundle,
    write_bundle,
)

FILES = {"backbone.safetensors": b"\x00weights", "adapters/math.safetensors": b"\x01adapter"}


def _bundle(tmp_path: Path, requires: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "bundles" / "nexus_bundle_v1"
    write_bundle(folder, FILES, {"capabilities": {"math": {"rank": 21}},
                                 "requires": requires or {"nexus-kernel": metadata.version("nexus-kernel")}})
    return folder


def test_a_written_bundle_verifies_and_lists_every_file(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    manifest = verify_bundle(folder)
    assert set(manifest["files"]) == set(FILES)
    assert manifest["files"]["backbone.safetensors"]["bytes"] == len(FILES["backbone.safetensors"])
    assert not list(folder.parent.glob(".*"))  # no partial or old folder left behind
    write_bundle(folder, {"backbone.safetensors": b"new"}, {})  # replaced as a whole
    assert json.loads((folder / MANIFEST).read_text())["files"].keys() == {"backbone.safetensors"}


def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"documents exists and is not a Nexus bundle \(no manifest.json\); "
                                          "a bundle replaces only an earlier bundle"):
        write_bundle(folder, FILES, {})
    assert (folder / "thesis.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["documents"]
    (folder / "thesis.txt").unlink()
    write_bundle(folder, FILES, {})  # an empty folder is taken
    assert verify_bundle(folder)["files"].keys() == FILES.keys()


def test_a_replace_stopped_between_its_renames_is_undone_by_the_next(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "out"
    replace_folder(folder, {"a.txt": b"first"})
    folder.rename(tmp_path / ".out.old")  # the state a kill between the two renames leaves
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(OSError, match="No space"):
        replace_folder(folder, {"a.txt": b"second"})
    assert (folder / "a.txt").read_text() == "first"  # the earlier contents are back, not lost
    monkeypatch.undo()
    replace_folder(folder, {"a.txt": b"second"})
    assert (folder / "a.txt").read_text() == "second"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no partial or old folder beside it


def test_a_tampered_missing_or_unlisted_file_is_refused(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "adapters/math.safetensors").write_bytes(b"\x01adaptes")  # same size, other bytes
    with pytest.raises(BundleError, match=r"adapters/math.safetensors does not match its checksum"):
        verify_bundle(folder)
    (folder / "adapters/math.safetensors").unlink()
    with pytest.raises(BundleError, match=r"adapters/math.safetensors is listed in the manifest but missing"):
        verify_bundle(folder)
    folder = _bundle(tmp_path)
    (folder / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"files not in the manifest: extra.safetensors"):
        verify_bundle(folder)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "adapters/../../x", ""])
def test_a_manifest_path_that_escapes_the_bundle_is_refused(tmp_path: Path, name: str) -> None:
    folder = _bundle(tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = {"bytes": 1, "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="escapes the bundle"):
        verify_bundle(folder)
    with pytest.raises(BundleError, match="escapes the bundle"):
        write_bundle(tmp_path / "other", {name: b"x"}, {})


def test_a_link_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(FILES["backbone.safetensors"])
    (folder / "backbone.safetensors").unlink()
    (folder / "backbone.safetensors").symlink_to(secret)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        verify_bundle(folder)


def test_a_missing_or_different_plugin_distribution_is_refused(tmp_path: Path) -> None:
    folder = _bundle(tmp_path, {"acme-cap-chemistry": "1.0.0"})
    with pytest.raises(BundleError, match=r"needs plugin distributions acme-cap-chemistry==1.0.0 \(not installed\)"):
        verify_bundle(folder)
    folder = _bundle(tmp_path, {"nexus-kernel": "0.0.1"})
    with pytest.raises(BundleError, match=r"nexus-kernel==0.0.1 \(installed: "):
        verify_bundle(folder)


def test_bad_manifests_are_named(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(folder)
    (folder / MANIFEST).write_text(json.dumps({"format": 99, "files": {}}))
    with pytest.raises(BundleError, match="bundle format 99"):
        verify_bundle(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a Nexus bundle"):
        verify_bundle(folder)


def _rewrite_manifest(folder: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """Replace the bundle's manifest with `change(manifest)`; returns the manifest's path."""
    path = folder / MANIFEST
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return path


def _with(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda manifest: {**manifest, key: value}


def _with_file(entry: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda manifest: {**manifest, "files": {**manifest["files"], "backbone.safetensors": entry}}


GOOD_SHA = sha256_bytes(FILES["backbone.safetensors"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda manifest: [], "the manifest must be a JSON object, got list"),
    (lambda manifest: "manifest", "the manifest must be a JSON object, got str"),
    (_with("files", ["backbone.safetensors"]), "'files' must list the bundle's files"),
    (_with_file("abc"), "files['backbone.safetensors'] must be an object with 'bytes' and 'sha256', got str"),
    (_with_file(None), "files['backbone.safetensors'] must be an object with 'bytes' and 'sha256', got NoneType"),
    (_with_file({"bytes": "8", "sha256": GOOD_SHA}),
     "files['backbone.safetensors']['bytes'] must be an integer >= 0, got '8'"),
    (_with_file({"bytes": -1, "sha256": GOOD_SHA}),
     "files['backbone.safetensors']['bytes'] must be an integer >= 0, got -1"),
    (_with_file({"bytes": True, "sha256": GOOD_SHA}),
     "files['backbone.safetensors']['bytes'] must be an integer >= 0, got True"),
    (_with_file({"bytes": 8}), "files['backbone.safetensors']['sha256'] must be 64 lowercase hex digits, got None"),
    (_with_file({"bytes": 8, "sha256": GOOD_SHA.upper()}),
     f"files['backbone.safetensors']['sha256'] must be 64 lowercase hex digits, got {GOOD_SHA.upper()!r}"),
    (_with_file({"bytes": 8, "sha256": GOOD_SHA[:-1]}),
     f"files['backbone.safetensors']['sha256'] must be 64 lowercase hex digits, got {GOOD_SHA[:-1]!r}"),
    (_with("requires", ["nexus-kernel"]), "'requires' must be an object of distribution name to version, got list"),
    (_with("requires", {"nexus-kernel": 1}), "requires['nexus-kernel'] must be a version string, got int"),
])
def test_a_manifest_of_the_wrong_shape_is_refused_naming_the_key(
        tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str) -> None:
    path = _rewrite_manifest(_bundle(tmp_path), change)
    with pytest.raises(BundleError) as caught:
        verify_bundle(path.parent)
    assert str(caught.value) == f"{path}: {message}"


def _package_manifest() -> dict[str, Any]:
    """A manifest with the sections `load_bundle` reads, every one well formed."""
    from nexus_kernel.contracts import AdapterSpec

    spec = AdapterSpec(capability="math", rank=4, hidden_size=8, targets={"model.layers.0.q_proj": (8, 8)},
                       anchored_layers=(1,))
    files = {name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in FILES.items()}
    return {"format": 1, "files": files, "capabilities": {"math": {"plugin": "nexus-cap-math"}},
            "student": {"scheme": "int8", "quantizers": {"backbone": "nexus-kernel"},
                        "adapters": {"math": spec.to_json()}}}


def _student(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["student"].__setitem__(key, value)


def _spec(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["student"]["adapters"]["math"].__setitem__(key, value)


@pytest.mark.parametrize(("change", "message"), [
    (lambda manifest: manifest.pop("capabilities"),
     "'capabilities' must be an object of capability name to object, got NoneType"),
    (lambda manifest: manifest.__setitem__("capabilities", ["math"]),
     "'capabilities' must be an object of capability name to object, got list"),
    (lambda manifest: manifest["capabilities"].__setitem__("math", "nexus-cap-math"),
     "capabilities['math'] must be an object whose 'plugin' is a string, got str 'nexus-cap-math'"),
    (lambda manifest: manifest["capabilities"].__setitem__("math", {"plugin": 3}),
     "capabilities['math'] must be an object whose 'plugin' is a string, got dict {'plugin': 3}"),
    (lambda manifest: manifest.pop("student"), "no 'student' section to rebuild the student from"),
    (_student("scheme", 8), "student['scheme'] must be a string, got 8"),
    (_student("quantizers", ["nexus-kernel"]),
     "student['quantizers'] must be an object of module to quantizer name, got ['nexus-kernel']"),
    (_student("adapters", ["math"]), "student['adapters'] must be an object of capability name to adapter spec, "
                                     "got list"),
    (_student("adapters", {"math": "spec"}),
     "student['adapters']['math'] must be an object (an adapter spec), got str"),
    (_spec("colour", "red"),
     "student['adapters']['math'] is not an adapter spec (unknown keys: colour; missing: none)"),
    (lambda manifest: manifest["student"]["adapters"]["math"].pop("targets"),
     "student['adapters']['math'] is not an adapter spec (unknown keys: none; missing: targets)"),
    (_spec("rank", "4"), "student['adapters']['math']['rank'] must be an integer >= 1, got '4'"),
    (_spec("targets", {"q": [8]}),
     "student['adapters']['math']['targets'] must be an object of layer name to [in_features, out_features], "
     "got {'q': [8]}"),
    (_spec("anchored_layers", [-1]), "student['adapters']['math']['anchored_layers'] must be a list of integers >= 0, "
                                     "got [-1]"),
    (_spec("output_dim", "8"), "student['adapters']['math']['output_dim'] must be an integer >= 1 or null, got '8'"),
    (lambda manifest: manifest["files"].pop("adapters/math.safetensors"),
     "'files' does not list 'adapters/math.safetensors', which 'student' needs"),
])
def test_the_packaged_students_sections_are_checked_naming_the_key(
        tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str) -> None:
    from nexus_kernel.student.packaging import check_package_schema

    manifest = _package_manifest()
    check_package_schema(tmp_path / MANIFEST, manifest)
    change(manifest)
    with pytest.raises(BundleError) as caught:
        check_package_schema(tmp_path / MANIFEST, manifest)
    assert str(caught.value) == f"{tmp_path / MANIFEST}: {message}"


def test_every_adapter_spec_field_has_a_shape_check() -> None:
    from dataclasses import fields

    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.student.packaging import _SPEC_REQUIRED, _SPEC_SHAPES

    assert set(_SPEC_SHAPES) == {item.name for item in fields(AdapterSpec)}
    assert set(_SPEC_REQUIRED) <= set(_SPEC_SHAPES)


@pytest.mark.parametrize(("change", "message"), [
    (lambda manifest: [], "the manifest must be a JSON object, got list"),
    (_with_file("abc"), "files['backbone.safetensors'] must be an object with 'bytes' and 'sha256', got str"),
])
def test_nexus_infer_refuses_a_malformed_manifest_with_exit_code_2(
        tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str) -> None:
    path = _rewrite_manifest(_bundle(tmp_path), change)
    answered = nexus("infer", str(path.parent), "--capability", "math", "1 + 1", cwd=tmp_path)
    assert answered.returncode == 2, answered.stderr
    assert "Traceback" not in answered.stderr
    assert answered.stderr.strip().splitlines()[-1] == f"error: {path}: {message}"
