"""Stage 5's pieces: moving the teacher folders away and back, the child's report of the
teacher path it wanted, and the retention table's failure rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_kernel.errors import StageError
from nexus_kernel.guard import TeacherAccessError
from nexus_kernel.stage_validate import away_path, failing, restore_moved, teachers_moved_away
from nexus_kernel.student_eval import _teacher_path


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
    with teachers_moved_away(folders) as moved:
        assert sorted(moved) == sorted(str(f) for f in folders.values())
        assert not any(folder.exists() for folder in folders.values())
    assert all((folder / "model.safetensors").read_bytes() == b"weights" for folder in folders.values())
    with pytest.raises(RuntimeError, match="student crashed"), teachers_moved_away(folders):
        raise RuntimeError("student crashed")
    assert all(folder.is_dir() for folder in folders.values())
    # A run killed inside the block leaves them away: the next run restores them first.
    folders["alpha"].rename(away_path(folders["alpha"]))
    assert away_path(folders["alpha"]).name == ".alpha.nexus-removed"
    assert restore_moved(folders) == [folders["alpha"]]
    assert (folders["alpha"] / "model.safetensors").is_file() and restore_moved(folders) == []


def test_a_folder_that_cannot_move_is_a_clear_error(tmp_path: Path) -> None:
    folders = _teachers(tmp_path)
    away_path(folders["beta"]).mkdir()
    (away_path(folders["beta"]) / "occupied").write_text("x")  # rename onto a non-empty folder fails
    with pytest.raises(StageError, match="teacher removal: cannot move .*beta away"):
        with teachers_moved_away(folders):
            pass
    assert all(folder.is_dir() for folder in folders.values())


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
