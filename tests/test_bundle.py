"""The bundle format: checksums written atomically, and every way a bundle is refused."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from nexus_kernel.bundle import MANIFEST, BundleError, verify_bundle, write_bundle

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
