"""What keeps a run from touching what it does not own: the run directory's lock, the
declared-roots guard and the content fingerprints of teacher folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nexus_kernel.config import load_config
from nexus_kernel.errors import ConfigError
from nexus_kernel.run.directory_lock import RunDirectoryBusy, exclusive_run_directory
from nexus_kernel.run.layout import RUN_LOCK
from nexus_kernel.run.roots import check_root, check_run_roots
from nexus_kernel.teachers import fingerprints
from nexus_kernel.teachers.fingerprints import (
    MISSING,
    FileHashCache,
    folder_fingerprint,
)

HOLD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from nexus_kernel.run.directory_lock import exclusive_run_directory
    with exclusive_run_directory(Path(sys.argv[1])):
        print("held", flush=True)
        if sys.argv[2] == "die":
            os._exit(9)
        time.sleep(60)
""")


def _holder(run_dir: Path, how: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), how], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_second_run_on_a_held_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "run", "hold")
    try:
        with pytest.raises(RunDirectoryBusy, match=rf"is in use by another nexus run \(PID {holder.pid}, started "):
            with exclusive_run_directory(tmp_path / "run"):
                pytest.fail("the lock must not be granted twice")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path: Path) -> None:
    dead = _holder(tmp_path / "run", "die")
    assert dead.wait() == 9 and (tmp_path / "run" / RUN_LOCK).stat().st_size > 0
    with exclusive_run_directory(tmp_path / "run") as previous:
        assert previous is not None and previous.startswith(f"PID {dead.pid}, started ")
    with exclusive_run_directory(tmp_path / "run") as previous:  # released cleanly: nothing to report
        assert previous is None


def _config(tmp_path: Path, models_dir: str) -> Path:
    config = tmp_path / "project" / "configs" / "nexus.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[registry]\nmodels_dir = "{models_dir}"\n')
    return config


@pytest.mark.parametrize(("models_dir", "reason"), [
    ("/", "is a filesystem root"),
    ("..", "is or holds the config file"),
    ("../..", "is or holds the config file"),
    ("../runs", "is or holds the run directory"),
])
def test_a_models_dir_that_would_put_user_files_in_reach_is_refused(tmp_path: Path, models_dir: str, reason: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(_config(tmp_path, models_dir))
    with pytest.raises(ConfigError, match=f"registry.models_dir = '.*' {reason}"):
        check_run_roots(config, tmp_path / "project" / "runs" / "demo")


def test_the_home_folder_and_the_working_directory_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "home" / "work")
    with pytest.raises(ConfigError, match=r"registry.models_dir = '.*home' is the home folder; Nexus deletes"):
        check_root("registry.models_dir", tmp_path / "home", "x", {})
    with pytest.raises(ConfigError, match=r"--run-dir = '\.' is or holds the current directory"):
        check_root("--run-dir", Path("."), "runs/<name>", {"the current directory": Path.cwd()})
    check_root("--run-dir", Path("runs/demo"), "runs/<name>", {"the current directory": Path.cwd()})


def test_the_default_layout_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "project" if (tmp_path / "project").is_dir() else tmp_path)
    config = load_config(_config(tmp_path, "../models"))
    check_run_roots(config, tmp_path / "project" / "runs" / "demo")
    check_run_roots(config, None)


def test_a_file_replaced_in_place_changes_the_fingerprint_even_with_its_size_and_mtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "teacher"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"A" * 64)
    (folder / "sub" / "config.json").write_text("{}")
    (folder / ".cache").mkdir()
    cache = FileHashCache(tmp_path / "cache.json")
    first = folder_fingerprint(folder, cache)
    cache.save()
    reads = []
    monkeypatch.setattr(fingerprints, "sha256_file", lambda path: reads.append(path) or "hash")
    FileHashCache(tmp_path / "cache.json").sha256(folder / "model.safetensors")
    assert reads == [folder / "model.safetensors"]  # written just now: too recent to trust its stamp
    monkeypatch.undo()
    (folder / ".cache" / "download.metadata").write_text("changes on every download")
    assert folder_fingerprint(folder, FileHashCache(tmp_path / "cache.json")) == first  # hidden: left out
    # Hashed long after it last changed, so its stamp is trusted from now on ...
    now = time.time_ns
    monkeypatch.setattr(fingerprints.time, "time_ns", lambda: now() + 10_000_000_000)
    trusted = FileHashCache(tmp_path / "trusted.json")
    assert folder_fingerprint(folder, trusted) == first
    trusted.save()
    status = (folder / "model.safetensors").stat()
    time.sleep(0.05)  # past the file system's timestamp granularity, as any real replacement is
    (folder / "model.safetensors").write_bytes(b"B" * 64)  # same size ...
    os.utime(folder / "model.safetensors", ns=(status.st_atime_ns, status.st_mtime_ns))  # ... same mtime
    assert folder_fingerprint(folder, FileHashCache(tmp_path / "trusted.json")) != first  # ... but ctime moved
    assert folder_fingerprint(tmp_path / "gone", cache) == MISSING


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"A" * 64)
    monkeypatch.setattr(fingerprints.time, "time_ns", lambda: weights.stat().st_ctime_ns + 10_000_000_000)
    cache = FileHashCache(tmp_path / "cache.json")
    digest = cache.sha256(weights)
    cache.save()
    monkeypatch.setattr(fingerprints, "sha256_file", lambda path: pytest.fail(f"{path} read again"))
    assert FileHashCache(tmp_path / "cache.json").sha256(weights) == digest
