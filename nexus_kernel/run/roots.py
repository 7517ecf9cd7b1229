"""The folders a run may delete in, and the ones it must refuse as such.

A run deletes only inside its declared roots: the run directory (stale temp files, and with
`--yes` its training-only artifacts) and `registry.models_dir` (stale partial builds, and with
`--yes` the teacher folders stage 7 lists). A root that is a filesystem root, the home
folder, or that contains the config file, the current directory or the run directory would
put a user's own files in reach, so it is refused before anything is written or deleted.
"""

from __future__ import annotations

from pathlib import Path

from nexus_kernel.config import Config
from nexus_kernel.errors import ConfigError


def _danger(root: Path, protected: dict[str, Path]) -> str | None:
    """Why `root` must not be a root to delete in, or None when it is fine."""
    if root == Path(root.anchor):
        return "is a filesystem root"
    if root == Path.home().resolve():
        return "is the home folder"
    for what, path in protected.items():
        if path == root or path.is_relative_to(root):
            return f"is or holds {what} ({path})"
    return None


def check_root(key: str, folder: Path, example: str, protected: dict[str, Path]) -> None:
    """Raise `ConfigError` naming `key` when `folder` is dangerous as a root to delete in (see
    the module docstring); `protected` names the paths it may not contain, and `example` is
    a good value to suggest."""
    root = folder.expanduser().resolve()
    reason = _danger(root, {what: path.resolve() for what, path in protected.items()})
    if reason is not None:
        raise ConfigError(
            f"{key} = {str(folder)!r} {reason}; Nexus deletes inside this folder (stale partial builds and "
            f"temp files, and with --yes what stage 7 lists), so it must be a folder of its own, e.g. {example}")


def check_run_roots(config: Config, run_dir: Path | None) -> None:
    """Refuse `registry.models_dir` and the run directory (when there is one) as roots when
    either is dangerous; called before a command writes or deletes anything."""
    protected = {"the config file": config.source, "the current directory": Path.cwd()}
    models_dir = Path(config.section("registry")["models_dir"])
    beside = {"the run directory": run_dir} if run_dir is not None else {}
    check_root("registry.models_dir", models_dir, "'models' beside the config", {**protected, **beside})
    if run_dir is not None:
        check_root("--run-dir", run_dir, "runs/<name>", protected)
