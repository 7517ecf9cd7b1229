"""The bundle on disk: files with checksums in `manifest.json`, written atomically and checked
before anything in it is loaded.

`write_bundle` writes every file into a temporary sibling folder, records each file's size
and sha256 in the manifest, and renames the folder into place (an existing bundle is replaced
only once the new one is complete; an existing folder that is not a bundle is never replaced). `verify_bundle` refuses a manifest of the wrong shape
(`check_manifest_schema`), one whose paths leave the bundle (absolute paths, `..`, or links
pointing outside), a missing or tampered file, a file the manifest does not list, and a
bundle that needs a plugin distribution that is not installed. Stage 6 and `load_bundle` build on these two.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from nexus_kernel.errors import NexusError
from nexus_kernel.run.fsio import canonical_json, sha256_bytes, sha256_file

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


class BundleError(NexusError):
    """A bundle that must not be loaded: the message names the bundle and the file or key."""


def _safe_relative(bundle: Path, name: str) -> Path:
    """`bundle / name` for a relative POSIX path that stays inside the bundle, links resolved."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise BundleError(f"{bundle}: manifest path {name!r} escapes the bundle")
    path = bundle.joinpath(*pure.parts)
    if not path.resolve().is_relative_to(bundle.resolve()):
        raise BundleError(f"{bundle}: {name!r} resolves outside the bundle (a link?)")
    return path


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest_schema(path: Path, manifest: Any) -> dict[str, Any]:
    """`manifest` (parsed from `path`) once its shape is right: a JSON object whose `format` is
    `BUNDLE_FORMAT`, whose `files` map each relative path to `{"bytes": int >= 0, "sha256": 64
    lowercase hex digits}`, and whose optional `requires` maps distribution names to versions.
    Anything else raises `BundleError` naming `path` and the key. Paths and checksums
    themselves are checked by `verify_bundle`."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, this Nexus reads {BUNDLE_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: 'files' must list the bundle's files")
    for name, entry in files.items():
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: files[{name!r}] must be an object with 'bytes' and 'sha256', "
                              f"got {type(entry).__name__}")
        size, digest = entry.get("bytes"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"{path}: files[{name!r}]['bytes'] must be an integer >= 0, got {size!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise BundleError(f"{path}: files[{name!r}]['sha256'] must be 64 lowercase hex digits, got {digest!r}")
    requires = manifest.get("requires", {})
    if not isinstance(requires, dict):
        raise BundleError(f"{path}: 'requires' must be an object of distribution name to version, "
                          f"got {type(requires).__name__}")
    for distribution, version in requires.items():
        if not isinstance(version, str):
            raise BundleError(f"{path}: requires[{distribution!r}] must be a version string, "
                              f"got {type(version).__name__}")
    return manifest


def write_bundle(folder: Path, files: Mapping[str, bytes], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write `files` (bundle-relative POSIX path to bytes) and `manifest.json` (the given fields
    plus `format` and `files` with each file's bytes and sha256) into `folder`, atomically.
    Returns the manifest written."""
    if MANIFEST in files:
        raise BundleError(f"{folder}: {MANIFEST} is written by the bundle itself")
    if folder.exists() and not (folder / MANIFEST).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        raise BundleError(f"{folder} exists and is not a Nexus bundle (no {MANIFEST}); a bundle replaces only an "
                          "earlier bundle: choose another package.bundle_dir, or move that folder")
    listed = {name: {"bytes": len(data), "sha256": sha256_bytes(data)} for name, data in sorted(files.items())}
    written = {**manifest, "format": BUNDLE_FORMAT, "files": listed}
    replace_folder(folder, {**files, MANIFEST: canonical_json(written).encode("utf-8")})
    return written


def replace_folder(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` (relative POSIX path to bytes, each inside `folder`) into a temporary
    sibling of `folder`, then rename it into place: `folder` holds either what it held or all
    of `files`, never a part. A replace stopped between its two renames is undone by the next
    call (`folder` is restored from `.<name>.old` before anything is written). The caller
    decides whether an existing `folder` may be replaced."""
    for name in files:
        _safe_relative(folder, name)
    old = folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():  # an earlier replace stopped between its two renames
        os.rename(old, folder)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in sorted(files.items()):
        path = partial.joinpath(*PurePosixPath(name).parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.rename(folder, old)
    os.rename(partial, folder)
    shutil.rmtree(old, ignore_errors=True)


def verify_bundle(folder: Path) -> dict[str, Any]:
    """The bundle's manifest once every check passes (see the module docstring); a failed check
    raises `BundleError` naming the bundle and what is wrong."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST} (not a Nexus bundle)")
    try:
        parsed = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from None
    manifest = check_manifest_schema(manifest_path, parsed)
    files = manifest["files"]
    for name, expected in sorted(files.items()):
        path = _safe_relative(folder, name)
        if not path.is_file():
            raise BundleError(f"{folder}: {name} is listed in the manifest but missing")
        if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise BundleError(f"{folder}: {name} does not match its checksum in the manifest (tampered or truncated)")
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file() or path.is_symlink()}
    unlisted = sorted(present - set(files) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{folder}: files not in the manifest: {', '.join(unlisted[:5])}")
    missing = []
    for distribution, version in sorted(manifest.get("requires", {}).items()):
        try:
            installed = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            missing.append(f"{distribution}=={version} (not installed)")
            continue
        if installed != version:
            missing.append(f"{distribution}=={version} (installed: {installed})")
    if missing:
        raise BundleError(f"{folder}: needs plugin distributions {', '.join(missing)}; pip install them first")
    return manifest
