"""Stage 1: the teacher inventory CSV, bound to the capabilities that serve its categories.

The CSV has columns `Model Name, Parameters, Category, Best Feature` and an optional `Path`.
Every problem is a `RegistryError` shaped `<file>: row <n>, column '<column>': <problem>`, where
row 1 is the header, as a spreadsheet numbers it. With a plugin selection, a row whose category
only an installed but unselected plugin serves is left out and reported, not an error.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, overload

from nexus_kernel.capability import Capability, UnselectedCapabilities
from nexus_kernel.errors import RegistryError

REQUIRED_COLUMNS = ("Model Name", "Parameters", "Category", "Best Feature")
OPTIONAL_COLUMNS = ("Path",)

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
MAX_PARAMETERS = 100 * 10**12
"""100T: fifty times the largest published models (about 2T parameters). A larger count is a
typo (a unit given twice, zeros too many), and memory plans computed from it would be absurd."""
_PARAMETERS = re.compile(
    r"^(?P<number>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)\s*(?P<unit>[KMBT]?)$",
    re.IGNORECASE,
)


def parse_parameter_count(text: str) -> int:
    """`"7B"` to 7_000_000_000, `"1.5B"`, `"350M"`, `"22M"`, `"0.4M"`, `"1,450,000"` likewise.

    Raises `ValueError` for anything else, including counts that are not whole numbers
    (`"0.5K5"`, `"1.2345K"`), zero, and counts above `MAX_PARAMETERS` (100T).
    """
    match = _PARAMETERS.match(text.strip())
    if match is None:
        raise ValueError(f"cannot parse {text!r} as a parameter count (e.g. 7B, 1.5B, 350M, 0.4M)")
    try:
        count = Decimal(match["number"].replace(",", "")) * _UNITS[match["unit"].upper()]
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise ValueError(f"cannot parse {text!r} as a parameter count") from None
    if count != count.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of parameters ({count})")
    if count <= 0:
        raise ValueError(f"{text!r}: a teacher has at least one parameter")
    if count > MAX_PARAMETERS:
        raise ValueError(f"{text!r} is more than {format_parameter_count(MAX_PARAMETERS)} parameters "
                         "(the largest published models have about 2T); check the number and its unit")
    return int(count)


def format_parameter_count(count: int) -> str:
    """The shortest exact suffixed form: 1_500_000_000 to `"1.5B"`, 400_000 to `"400K"`."""
    if count <= 0:
        raise ValueError("a parameter count is positive")
    for unit in ("T", "B", "M", "K"):
        if count >= _UNITS[unit]:
            mantissa = Decimal(count) / _UNITS[unit]
            text = format(mantissa.normalize(), "f")
            return f"{text}{unit}"
    return str(count)


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher of the registry, bound to its capability."""

    name: str
    parameters: int
    category: str
    best_feature: str
    capability: str
    plugin: str
    benchmarks: tuple[str, ...]
    path: str
    row: int
    output: str = ""
    """What the student gives for this teacher (`Capability.output` of the capability as
    distilled from it, see `nexus_kernel.teachers.binding`); "" before stage 1 binds it."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["benchmarks"] = list(self.benchmarks)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TeacherEntry:
        """The entry `to_json` wrote; keys stages added beside it (a fingerprint) are ignored."""
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and key != "benchmarks"},
                   benchmarks=tuple(data["benchmarks"]))


def _canonical_column(name: str) -> str:
    return " ".join(name.split()).casefold()


def _map_header(source: Path, header: list[str]) -> dict[str, int]:
    """Column name (as in REQUIRED/OPTIONAL_COLUMNS) to its index; errors for missing ones."""
    found = {_canonical_column(cell): index for index, cell in enumerate(header)}
    known = {*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS}
    columns = {name: found[_canonical_column(name)] for name in known if _canonical_column(name) in found}
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            present = ", ".join(cell.strip() for cell in header if cell.strip()) or "none"
            close = difflib.get_close_matches(name, [cell.strip() for cell in header], n=1)
            hint = f"; is {close[0]!r} a misspelling?" if close else ""
            raise RegistryError(
                f"{source}: row 1, column '{name}': missing column (found: {present}){hint}"
            )
    return columns


@dataclass(frozen=True)
class SkippedRow:
    """A CSV row left out because only an installed but unselected plugin serves its category."""

    row: int
    name: str
    category: str
    capability: str
    plugin: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"row {self.row} {self.name} ({self.category}, {self.plugin})"


@dataclass(frozen=True)
class TeacherRegistry(Sequence[TeacherEntry]):
    """The teachers a CSV binds to the selected capabilities, and the rows it left out.

    It is a sequence of its `entries`, so code that only wants the teachers can treat it as one.
    """

    entries: tuple[TeacherEntry, ...]
    skipped: tuple[SkippedRow, ...] = ()

    @overload
    def __getitem__(self, index: int) -> TeacherEntry: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[TeacherEntry, ...]: ...
    def __getitem__(self, index: int | slice) -> TeacherEntry | tuple[TeacherEntry, ...]:
        return self.entries[index]

    def __len__(self) -> int:
        return len(self.entries)

    def skipped_summary(self) -> str | None:
        """One line naming every left-out row, or None when none was."""
        if not self.skipped:
            return None
        return (f"left out {len(self.skipped)} CSV rows of unselected plugins: "
                + ", ".join(row.describe() for row in self.skipped))


class _Binder:
    """Finds the capability serving a category, with errors that say what would serve it.

    `unselected`, when given with an active selection, is called at most once, and only for a
    category no selected capability serves, to learn what the unselected plugins declare.
    """

    def __init__(
        self,
        capabilities: Mapping[str, tuple[Capability, str]],
        selection_active: bool,
        unselected: Callable[[], UnselectedCapabilities] | None,
    ) -> None:
        self.capabilities = capabilities
        self.selection_active = selection_active
        self._ask_unselected = unselected if selection_active else None
        self._unselected: UnselectedCapabilities | None = None

    def bind(self, category: str) -> tuple[Capability, str] | None:
        """`(capability, plugin distribution)` of the selected capability serving `category`."""
        return _first_serving(self.capabilities.values(), category)

    def bind_unselected(self, category: str) -> tuple[Capability, str] | None:
        """The same among the installed but unselected plugins (None when not asked for)."""
        other = self._other_plugins()
        return None if other is None else _first_serving(other.capabilities, category)

    def unserved(self, category: str) -> str:
        """The problem with a category no installed plugin serves, as a message."""
        served = _categories_text(self.capabilities.values())
        if not self.selection_active:
            return f"unknown category {category!r} (known categories: {served})"
        message = f"category {category!r} is served by no selected plugin (the selected ones serve: {served})"
        other = self._other_plugins()
        if other is None:
            return message + "; add its plugin to --plugins or remove the row"
        found = [f"they serve: {_categories_text(other.capabilities)}"]
        found += [f"{plugin} could not be read: {why}" for plugin, why in other.unreadable]
        return (f"{message} nor by any installed unselected one ({'; '.join(found)}); "
                "install a plugin that serves it or remove the row")

    def _other_plugins(self) -> UnselectedCapabilities | None:
        if self._unselected is None and self._ask_unselected is not None:
            self._unselected = self._ask_unselected()
        return self._unselected


def _first_serving(
    capabilities: Iterable[tuple[Capability, str]], category: str
) -> tuple[Capability, str] | None:
    return next(((cap, plugin) for cap, plugin in capabilities if cap.serves(category)), None)


def _categories_text(capabilities: Iterable[tuple[Capability, str]]) -> str:
    categories = {category for capability, _ in capabilities for category in capability.categories}
    return ", ".join(sorted(categories)) or "none"


def _folder_name_problem(name: str) -> str | None:
    """Why `name` is not one plain folder name, or None when it is."""
    for char, shown in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "a NUL character")):
        if char in name:
            return f"contains {shown}"
    # '.' and '..' are not folders of their own; '.partial-*' are the demo builds' scratch folders.
    if name.startswith("."):
        return "starts with '.'"
    return None


def _teacher_folder(source: Path, row: int, name: str, explicit: str, models_dir: Path) -> Path:
    """The teacher's folder: the row's `Path` (relative to the CSV), else `models_dir/<name>`,
    where the name must be one plain folder name."""
    if "\x00" in explicit:
        raise RegistryError(f"{source}: row {row}, column 'Path': {explicit!r} contains a NUL character")
    if explicit:
        return (source.parent / Path(explicit).expanduser()).resolve()
    problem = _folder_name_problem(name)
    if problem is not None:
        raise RegistryError(
            f"{source}: row {row}, column 'Model Name': must be one folder name: {name!r} {problem}; "
            "give the folder in a 'Path' column"
        )
    return (models_dir / name).resolve()


def read_registry(
    source: Path,
    capabilities: Mapping[str, tuple[Capability, str]],
    models_dir: Path,
    *,
    selection_active: bool = False,
    unselected: Callable[[], UnselectedCapabilities] | None = None,
) -> TeacherRegistry:
    """Read and validate the teacher CSV at `source` and bind each row to its capability.

    `capabilities` maps capability name to (spec, owning distribution) for the selected
    plugins; `selection_active` says whether an allow-list chose them. With a selection and
    `unselected` (what the installed but unselected plugins declare; called at most once, and
    only for a category no selected plugin serves), a row of an unselected plugin is left out
    and listed in `skipped`. A category no installed plugin serves is a `RegistryError`, and so
    is a CSV whose every row is left out.
    """
    try:
        text = source.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RegistryError(f"teacher CSV not found: {source}") from None
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        # csv needs the raw newlines: str.splitlines would also split on \x85 and \u2028
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise RegistryError(f"{source}: malformed CSV: {exc}") from None
    numbered = [(index, cells) for index, cells in enumerate(rows, start=1) if any(c.strip() for c in cells)]
    if not numbered:
        raise RegistryError(f"{source}: row 1: the file is empty; expected a header row")
    header_row, header = numbered[0]
    columns = _map_header(source, header)
    binder = _Binder(capabilities, selection_active, unselected)
    entries: list[TeacherEntry] = []
    skipped: list[SkippedRow] = []
    first_seen: dict[str, int] = {}
    for row, cells in numbered[1:]:
        if len(cells) > len(header):
            raise RegistryError(
                f"{source}: row {row}: {len(cells)} cells but the header has {len(header)} columns"
            )

        def cell(column: str, row: int = row, cells: list[str] = cells) -> str:
            index = columns.get(column)
            return cells[index].strip() if index is not None and index < len(cells) else ""

        def fail(column: str, problem: str, row: int = row) -> RegistryError:
            return RegistryError(f"{source}: row {row}, column '{column}': {problem}")

        name = cell("Model Name")
        if not name:
            raise fail("Model Name", "empty model name")
        if name.casefold() in first_seen:
            raise fail("Model Name", f"duplicate model name {name!r} (first in row {first_seen[name.casefold()]})")
        first_seen[name.casefold()] = row
        try:
            parameters = parse_parameter_count(cell("Parameters"))
        except ValueError as exc:
            raise fail("Parameters", str(exc)) from None
        category = cell("Category")
        if not category:
            raise fail("Category", "empty category")
        bound = binder.bind(category)
        if bound is None:
            elsewhere = binder.bind_unselected(category)
            if elsewhere is None:
                raise fail("Category", binder.unserved(category))
            skipped.append(SkippedRow(row, name, category, elsewhere[0].name, elsewhere[1]))
            continue
        capability, plugin = bound
        folder = _teacher_folder(source, row, name, cell("Path"), models_dir)
        entries.append(
            TeacherEntry(
                name=name,
                parameters=parameters,
                category=category,
                best_feature=cell("Best Feature"),
                capability=capability.name,
                plugin=plugin,
                benchmarks=capability.benchmarks,
                output=capability.output,
                path=str(folder),
                row=row,
            )
        )
    if skipped and not entries:
        served = _categories_text(capabilities.values())
        raise RegistryError(
            f"{source}: row {header_row + 1}: no teachers for the selected plugins (they serve: "
            f"{served}); every row belongs to an unselected one: "
            + ", ".join(row.describe() for row in skipped)
            + "; add their plugins to --plugins or add rows for the selected ones"
        )
    if not entries:
        raise RegistryError(f"{source}: row {header_row + 1}: no teachers listed below the header")
    return TeacherRegistry(tuple(entries), tuple(skipped))

