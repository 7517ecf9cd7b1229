"""Where a capability's data comes from: a real folder in its benchmark's format, or the
plugin's seeded synthetic generator. Plugins own the formats; this module owns the plumbing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nexus_kernel.errors import DatasetError

SYNTHETIC_PREFIX = "synthetic:"

__all__ = ["DatasetError", "SYNTHETIC_PREFIX", "files_for_split", "items_of", "read_jsonl_rows",
           "resolve_source"]


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


def read_jsonl_rows(path: Path, text_fields: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, row)` for every non-blank line of a JSONL file. Each row must be an object
    whose `text_fields` hold strings; anything else is an error naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}: line {number}: expected an object with {', '.join(text_fields)}")
        for key in text_fields:
            if not isinstance(row.get(key), str):
                raise DatasetError(f"{path}: line {number}: missing text field {key!r}")
        yield number, row


def items_of(source: str, split: str, synthetic: Callable[[str], Iterable[Any]],
             folder: Callable[[Path, str], Iterable[Any]]) -> Iterable[Any]:
    """The items of `split` from a locked `source`: `synthetic(split)` for a `synthetic:` label,
    else `folder(path, split)` reading the real files."""
    if source.startswith(SYNTHETIC_PREFIX):
        return synthetic(split)
    return folder(Path(source), split)


def split_items(datasets: Mapping[str, str], split: str, recipe: Any,
                read_folder: Callable[[Path, str], Iterable[Any]], folder_split: str | None = None) -> Iterable[Any]:
    """Items of `split` ("train" or "test") from a capability's locked `datasets`: the
    synthetic `recipe`'s `train()` stream or `test()` list, or `read_folder(path,
    folder_split or split)` for real files."""
    if datasets[split].startswith(SYNTHETIC_PREFIX):
        return recipe.train() if split == "train" else recipe.test()
    return read_folder(Path(datasets[split]), folder_split or split)
