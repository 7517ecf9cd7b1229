"""Stage 5's pieces: moving the teacher folders away and back, the child's report of the
teacher path it wanted, and the retention table's failure rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.algorithms.retention import failing
from nexus_kernel.errors import StageError
from nexus_kernel.stages.validate_child import _teacher_path
from nexus_kernel.teachers.guard import TeacherAccessError
from nexus_kernel.run.layout import MOVED_TEACHERS
from nexus_kernel.teachers.removal import (
    RemovalJournalError,
    away_path,
    restore_from_journal,
    teachers_moved_away,
)


def _teachers(tmp_path: Path) -> dict[str, Path]:
    folders = {}
    for name in ("alpha", "beta"):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        folders[name] = folder
    return folders


def test_teacher_folders_are_moved_away_for_the_block_and_always_put_back(tmp_path: Path) -> None:
    folders = _teachers(tmp_path)
    journal = tmp_path / "run" / MOVED_TEACHERS
    with teachers_moved_away(folders, journal) as moved:
        assert sorted(moved) == sorted(str(f) for f in folders.values())
        assert not any(folder.exists() for folder in folders.values())
        listed = json.loads(journal.read_text())["moves"]
        assert [Path(move["away"]) for move in listed] == [away_path(f) for f in folders.values()]
    assert all((folder / "model.safetensors").read_bytes() == b"weights" for folder in folders.values())
    assert not journal.exists()
    with pytest.raises(RuntimeError, match="student crashed"), teachers_moved_away(folders, journal):
        raise RuntimeError("student crashed")
    assert all(folder.is_dir() for folder in folders.values()) and not journal.exists()


def _killed_inside_the_block(folders: dict[str, Path], journal: Path) -> None:
    """A process that dies (no clean-up at all) while the teachers are moved away."""
    program = ("import os, sys; from pathlib import Path; "
               "from nexus_kernel.teachers.removal import teachers_moved_away\n"
               "folders = {p: Path(p) for p in sys.argv[2:]}\n"
               "with teachers_moved_away(folders, Path(sys.argv[1])):\n    os._exit(9)")
    died = subprocess.run([sys.executable, "-c", program, str(journal), *map(str, folders.values())], check=False)
    assert died.returncode == 9


def test_a_killed_removal_is_put_back_from_its_journal(tmp_path: Path) -> None:
    folders = _teachers(tmp_path)
    journal = tmp_path / "run" / MOVED_TEACHERS
    _killed_inside_the_block(folders, journal)
    assert not any(folder.exists() for folder in folders.values()) and journal.is_file()
    # As if killed between the two renames: alpha moved, beta not yet.
    away_path(folders["beta"]).rename(folders["beta"])
    assert away_path(folders["alpha"]).name == ".alpha.nexus-removed" and journal.is_file()
    outcome = restore_from_journal(journal)
    assert outcome.restored == (folders["alpha"],) and outcome.missing == ()
    assert all((f / "model.safetensors").read_bytes() == b"weights" for f in folders.values())
    assert not journal.exists() and restore_from_journal(journal).restored == ()


def test_restoring_never_overwrites_a_folder_that_took_the_teachers_place(tmp_path: Path) -> None:
    folders = _teachers(tmp_path)
    journal = tmp_path / "run" / MOVED_TEACHERS
    _killed_inside_the_block(folders, journal)
    folders["alpha"].mkdir()  # e.g. an old Nexus rebuilt a demo teacher there
    with pytest.raises(RemovalJournalError, match="both places are now taken: .*alpha and .*.alpha.nexus-removed"):
        restore_from_journal(journal)
    assert away_path(folders["alpha"]).is_dir() and away_path(folders["beta"]).is_dir() and journal.is_file()


def test_a_folder_that_cannot_move_is_a_clear_error(tmp_path: Path) -> None:
    folders = _teachers(tmp_path)
    away_path(folders["beta"]).mkdir()
    (away_path(folders["beta"]) / "occupied").write_text("x")  # rename onto a non-empty folder fails
    journal = tmp_path / "run" / MOVED_TEACHERS
    with pytest.raises(StageError, match="teacher removal: cannot move .*beta away"):
        with teachers_moved_away(folders, journal):
            pytest.fail("the block must not run")
    assert all(folder.is_dir() for folder in folders.values()) and not journal.exists()


def test_the_child_names_the_teacher_path_it_wanted(tmp_path: Path) -> None:
    roots = [tmp_path / "models" / "alpha"]
    wanted = roots[0] / "model.safetensors"
    guarded = TeacherAccessError(f"the student tried to read a teacher file after teacher removal: {wanted}")
    assert _teacher_path(guarded, roots) == str(wanted)
    with pytest.raises(ValueError) as chained:
        try:
            open(wanted)  # noqa: SIM115 (the folder was moved away: FileNotFoundError)
        except FileNotFoundError as missing:
            raise ValueError("could not load") from missing
    assert _teacher_path(chained.value, roots) == str(wanted)
    assert _teacher_path(FileNotFoundError(2, "nope", str(tmp_path / "elsewhere")), roots) is None


def test_only_a_measurable_capability_below_the_threshold_fails() -> None:
    table = {"math": {"retention": {"status": "pass"}}, "voice": {"retention": {"status": "not measurable"}},
             "vision": {"retention": {"status": "below 0.97"}}}
    assert failing(table) == ["vision"]


def test_the_headline_is_the_first_declared_benchmark_whatever_order_the_scores_were_stored_in(
        tmp_path: Path) -> None:
    from nexus_kernel import Score
    from nexus_kernel.algorithms.retention import retention_table
    from nexus_kernel.run.fsio import atomic_write_json
    from nexus_kernel.run.layout import CHECKPOINT_DIR, REGISTRY_FILE

    def scores(first: float, second: float) -> dict[str, object]:
        return {"alpha": Score.from_items("alpha", [first] * 4, 0.0).to_json(with_items=True),
                "zeta": Score.from_items("zeta", [second] * 4, 0.0).to_json(with_items=True)}

    atomic_write_json(tmp_path / REGISTRY_FILE, {"teachers": [
        {"name": "t", "capability": "cap", "benchmarks": ["zeta", "alpha"], "path": str(tmp_path)}]})
    # pool.json is canonical JSON (sorted keys): "alpha" comes first, though "zeta" is the headline.
    atomic_write_json(tmp_path / CHECKPOINT_DIR / "cap" / "pool.json", {"teacher_scores": scores(1.0, 1.0)})
    table = retention_table(tmp_path, {"cap": scores(1.0, 0.0)})
    assert table["cap"]["benchmark"] == "zeta" and table["cap"]["retention"]["status"] != "pass"
    atomic_write_json(tmp_path / REGISTRY_FILE, {"teachers": [
        {"name": "t", "capability": "cap", "benchmarks": ["omega"], "path": str(tmp_path)}]})
    with pytest.raises(StageError, match=r"cap: the headline benchmark is the first one its plugin declares "
                                         r"\(\['omega'\]\), but retention_metric scored \['alpha', 'zeta'\]"):
        retention_table(tmp_path, {"cap": scores(1.0, 1.0)})
