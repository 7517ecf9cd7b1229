"""Removal never reaches outside the declared roots, links included; dry run by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_kernel.run.cleanup import CleanupError, plan_removal, remove


def _tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "models"
    teacher = root / "nexus-demo-math"
    teacher.mkdir(parents=True)
    (teacher / "model.safetensors").write_bytes(b"w" * 10)
    (teacher / "sub").mkdir()
    (teacher / "sub" / "config.json").write_text("{}")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"d")
    (teacher / "link.txt").symlink_to(precious)
    (teacher / "linked_dir").symlink_to(outside, target_is_directory=True)
    return {"root": root, "teacher": teacher, "precious": precious, "outside": outside}


def test_removal_lists_first_and_never_follows_links_out(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    plan = plan_removal([tree["teacher"]], [tree["root"]])
    names = sorted(str(d.path.relative_to(tree["teacher"])) for d in plan)
    assert names == ["link.txt", "linked_dir", "model.safetensors", "sub/config.json"]
    assert {d.path.name: d.link for d in plan}["linked_dir"] is True
    assert sum(d.bytes for d in plan) == 12

    remove(plan, [tree["root"]])  # dry run: nothing changes
    assert (tree["teacher"] / "model.safetensors").exists() and (tree["teacher"] / "link.txt").is_symlink()

    remove(plan, [tree["root"]], dry_run=False)
    assert not tree["teacher"].exists()  # the emptied folders went too
    assert tree["root"].is_dir()  # the root itself stays
    assert tree["precious"].read_text() == "keep me" and (tree["outside"] / "data.bin").read_bytes() == b"d"


def test_a_target_outside_the_roots_is_refused(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    for target in (tree["precious"], tree["outside"], tree["root"], tree["root"] / ".." / "precious.txt"):
        with pytest.raises(CleanupError, match="not inside the run's roots"):
            plan_removal([target], [tree["root"]])
    # A link inside the root that points out is removed as a link; its target is untouched.
    plan = plan_removal([tree["teacher"] / "linked_dir"], [tree["root"]])
    remove(plan, [tree["root"]], dry_run=False)
    assert not (tree["teacher"] / "linked_dir").exists() and (tree["outside"] / "data.bin").exists()


@pytest.mark.parametrize(("user_teachers", "deleted"), [(False, {"demo"}), (True, {"demo", "mine"})])
def test_yes_deletes_a_users_own_teacher_only_when_asked_separately(tmp_path: Path, user_teachers: bool,
                                                                    deleted: set[str]) -> None:
    from nexus_kernel.config import load_config
    from nexus_kernel.plugins import PluginSet
    from nexus_kernel.run.fsio import atomic_write_json
    from nexus_kernel.run.layout import REGISTRY_FILE
    from nexus_kernel.run.runner import RunContext
    from nexus_kernel.stages.cleanup import sanitization_plan
    from nexus_kernel.teachers.demo import RECIPE_FILE

    config_file = tmp_path / "configs/nexus.toml"
    config_file.parent.mkdir()
    config_file.write_text(f'[registry]\nmodels_dir = "../models"\n[cleanup]\n'
                           f'delete_user_teachers = {str(user_teachers).lower()}\n')
    folders = {name: tmp_path / "models" / name for name in ("demo", "mine")}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w")
    (folders["demo"] / RECIPE_FILE).write_text("{}")  # built by Nexus
    outside = tmp_path / "elsewhere" / "theirs"
    outside.mkdir(parents=True)
    run_dir = tmp_path / "runs/demo"
    atomic_write_json(run_dir / REGISTRY_FILE, {"teachers": [
        {"name": name, "path": str(folder)} for name, folder in {**folders, "theirs": outside}.items()]})
    context = RunContext(run_dir, load_config(config_file), PluginSet())
    plan, _, kept = sanitization_plan(context)
    assert {item.path.parent.name for item in plan} == deleted
    assert any("teacher theirs:" in line and "outside registry.models_dir" in line for line in kept)
    assert any(line.startswith("teacher mine: your own folder") for line in kept) is not user_teachers
