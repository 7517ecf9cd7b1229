"""Where a capability's data comes from: a real folder in its benchmark's format, or the
plugin's seeded synthetic generator. Plugins own the formats; this module owns the plumbing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nexus_kernel.errors import DatasetError

SYNTHETIC_PREFIX = "synthetic:"

__all__ = ["DatasetError", "SYNTHETIC_PREFIX", "files_for_split", "resolve_source"]


def files_for_split(folder: Path, split: str, suffix: str) -> list[Path]:
    """Files of `split` in `folder`: `<folder>/<split>/*<suffix>` when that sub-folder exists
    (the MMLU layout), else `<folder>/<split>*<suffix>` (the GSM8K layout); sorted by name.
    No file is an error naming the folder and the patterns tried."""
    if not folder.is_dir():
        raise DatasetError(f"data folder {folder} does not exist")
    nested = folder / split
    files = sorted(nested.glob(f"*{suffix}")) if nested.is_dir() else sorted(folder.glob(f"{split}*{suffix}"))
    if not files:
        raise DatasetError(
            f"{folder}: no {split!r} files (looked for {split}/*{suffix} and {split}*{suffix})"
        )
    return files


def resolve_source(settings: Mapping[str, Any], recipe_label: str) -> str:
    """A capability's data source: the configured `data_dir` as an absolute path (it must
    exist), else `synthetic:<recipe_label>`."""
    data_dir = settings.get("data_dir")
    if not data_dir:
        return SYNTHETIC_PREFIX + recipe_label
    folder = Path(data_dir).resolve()
    if not folder.is_dir():
        raise DatasetError(f"data_dir {data_dir} does not exist (set in [capabilities] of the config)")
    return str(folder)
