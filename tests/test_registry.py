"""Stage 1's teacher CSV: parameter counts, binding to capabilities, rows left out for
unselected plugins, and every error's shape."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_kernel import Capability
from nexus_kernel.capability import UnselectedCapabilities
from nexus_kernel.errors import RegistryError
from nexus_kernel.teachers.registry import (
    MAX_PARAMETERS,
    REQUIRED_COLUMNS,
    SkippedRow,
    format_parameter_count,
    parse_parameter_count,
    read_registry,
)

CAPABILITIES = {
    "math": (Capability("math", "text", ("Math",), ("GSM8K",)), "nexus-cap-math"),
    "voice": (Capability("voice", "audio", ("Voice",), ("voice cosine",)), "nexus-cap-voice"),
}


@pytest.mark.parametrize(
    ("text", "count"),
    [("7B", 7_000_000_000), ("1.5B", 1_500_000_000), ("350M", 350_000_000), ("22M", 22_000_000),
     ("0.4M", 400_000), ("1,450,000", 1_450_000), ("12k", 12_000), (" 2 T ", 2_000_000_000_000),
     (".5M", 500_000), ("413000", 413_000)],
)
def test_parameter_counts_parse(text: str, count: int) -> None:
    assert parse_parameter_count(text) == count


@pytest.mark.parametrize("text", ["", "7X", "B7", "1.5.1B", "0", "0.0M", "1.2345K", "-3M", "1,45B", "7 BB"])
def test_bad_parameter_counts_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_parameter_count(text)


@pytest.mark.parametrize("text", ["1000000000000000000000000000000", "1000000000000000000T",
                                  "100,000,000,000,001", "100.000000000001T", "101T"])
def test_implausibly_large_parameter_counts_are_rejected(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_parameter_count(text)
    assert str(caught.value) == (f"{text!r} is more than 100T parameters (the largest published "
                                 "models have about 2T); check the number and its unit")


def test_the_ceiling_itself_is_accepted() -> None:
    assert MAX_PARAMETERS == 10**14
    assert parse_parameter_count("100T") == parse_parameter_count("100,000,000,000,000") == MAX_PARAMETERS


@given(st.integers(min_value=1, max_value=MAX_PARAMETERS))
def test_parameter_count_format_round_trips(count: int) -> None:
    text = format_parameter_count(count)
    assert parse_parameter_count(text) == count
    assert parse_parameter_count(text.lower()) == count


@given(st.integers(min_value=1, max_value=10**5), st.sampled_from(["K", "M", "B"]))
def test_whole_units_parse_exactly(mantissa: int, unit: str) -> None:
    scale = {"K": 10**3, "M": 10**6, "B": 10**9}[unit]
    assert parse_parameter_count(f"{mantissa}{unit}") == mantissa * scale


def _write(path: Path, rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


HEADER = list(REQUIRED_COLUMNS)

safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1, max_size=30,
).map(str.strip).filter(bool)


@given(
    names=st.lists(safe_text.filter(lambda s: not ({"/", "\\"} & set(s)) and not s.startswith(".")),
                   min_size=1, max_size=6, unique_by=str.casefold),
    counts=st.lists(st.integers(min_value=1, max_value=10**13), min_size=6, max_size=6),
    features=st.lists(st.text(max_size=40).map(lambda s: s.replace("\x00", "").replace("\r", "")),
                      min_size=6, max_size=6),
    categories=st.lists(st.sampled_from(["Math", "math", "Voice", " VOICE "]), min_size=6, max_size=6),
)
def test_csv_round_trip(tmp_path_factory: pytest.TempPathFactory, names: list[str], counts: list[int],
                        features: list[str], categories: list[str]) -> None:
    folder = tmp_path_factory.mktemp("csv")
    rows = [[name, format_parameter_count(counts[i]), categories[i], features[i]]
            for i, name in enumerate(names)]
    entries = read_registry(_write(folder / "t.csv", [HEADER, *rows]), CAPABILITIES, folder / "models")
    assert [e.name for e in entries] == names
    assert [e.parameters for e in entries] == counts[: len(names)]
    assert [e.best_feature for e in entries] == [f.strip() for f in features[: len(names)]]
    assert [e.capability for e in entries] == [c.strip().lower() for c in categories[: len(names)]]
    assert all(e.path == str((folder / "models" / e.name).resolve()) for e in entries)


def test_binding_quoted_fields_and_path_column(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    source = tmp_path / "ModelName-Parameters-Category-BestFeature.csv"
    source.write_text(
        "Model Name,Parameters,Category,Best Feature,Path\n"
        'qwen-math,1.5B,Math,"word problems, with ""steps""\nand newlines",elsewhere\n'
        "whisper-tiny,39M,Voice,speech,\n",
        encoding="utf-8",
    )
    first, second = read_registry(source, CAPABILITIES, tmp_path / "models")
    assert (first.name, first.parameters, first.capability, first.plugin, first.benchmarks) == (
        "qwen-math", 1_500_000_000, "math", "nexus-cap-math", ("GSM8K",))
    assert first.best_feature == 'word problems, with "steps"\nand newlines'
    assert first.path == str(tmp_path / "elsewhere")
    assert second.path == str(tmp_path / "models" / "whisper-tiny")
    assert second.row == 3  # rows count records, as a spreadsheet does, not lines


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["Model Name", "Parameters", "Category"], ["a", "1M", "Math"]],
         "row 1, column 'Best Feature': missing column (found: Model Name, Parameters, Category)"),
        ([["Model Name", "Params", "Category", "Best Feature"], ["a", "1M", "Math", "x"]],
         "row 1, column 'Parameters': missing column (found: Model Name, Params, Category, "
         "Best Feature); is 'Params' a misspelling?"),
        ([HEADER, ["a", "1M", "Math", "x"], ["b", "7X", "Math", "x"]],
         "row 3, column 'Parameters': cannot parse '7X' as a parameter count (e.g. 7B, 1.5B, 350M, 0.4M)"),
        ([HEADER, ["a", "1M", "Chemistry", "x"]],
         "row 2, column 'Category': unknown category 'Chemistry' (known categories: Math, Voice)"),
        ([HEADER, ["a", "1M", "Math", "x"], ["b", "2M", "Voice", "y"], ["A", "3M", "Math", "z"]],
         "row 4, column 'Model Name': duplicate model name 'A' (first in row 2)"),
        ([HEADER, ["", "1M", "Math", "x"]], "row 2, column 'Model Name': empty model name"),
        ([HEADER, ["a", "1M", "", "x"]], "row 2, column 'Category': empty category"),
        ([HEADER, ["a", "1M", "Math", "x", "extra"]], "row 2: 5 cells but the header has 4 columns"),
        ([HEADER, ["../escape", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: '../escape' contains '/'; "
         "give the folder in a 'Path' column"),
        ([HEADER, ["a", "1M", "Math", "x"], ["org/model", "1M", "Math", "x"]],
         "row 3, column 'Model Name': must be one folder name: 'org/model' contains '/'; "
         "give the folder in a 'Path' column"),
        ([HEADER, ["/etc", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: '/etc' contains '/'; "
         "give the folder in a 'Path' column"),
        ([HEADER, ["a\\b", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: 'a\\\\b' contains '\\'; "
         "give the folder in a 'Path' column"),
        ([HEADER, [".hidden", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: '.hidden' starts with '.'; "
         "give the folder in a 'Path' column"),
        ([HEADER, [" . ", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: '.' starts with '.'; "
         "give the folder in a 'Path' column"),
        ([HEADER, ["a\x00b", "1M", "Math", "x"]],
         "row 2, column 'Model Name': must be one folder name: 'a\\x00b' contains a NUL character; "
         "give the folder in a 'Path' column"),
        ([[*HEADER, "Path"], ["a", "1M", "Math", "x", "in\x00side"]],
         "row 2, column 'Path': 'in\\x00side' contains a NUL character"),
        ([HEADER, ["   ", "1M", "Math", "x"]], "row 2, column 'Model Name': empty model name"),
        ([HEADER, ["a", "1000000000000000000T", "Math", "x"]],
         "row 2, column 'Parameters': '1000000000000000000T' is more than 100T parameters "
         "(the largest published models have about 2T); check the number and its unit"),
        ([HEADER], "row 2: no teachers listed below the header"),
        ([], "row 1: the file is empty; expected a header row"),
    ],
)
def test_registry_errors_name_row_and_column(tmp_path: Path, rows: list[list[str]], message: str) -> None:
    source = _write(tmp_path / "teachers.csv", rows)
    with pytest.raises(RegistryError) as caught:
        read_registry(source, CAPABILITIES, tmp_path / "models")
    assert str(caught.value).startswith(f"{source}: {message}")


def test_category_of_an_unselected_plugin(tmp_path: Path) -> None:
    source = _write(tmp_path / "teachers.csv", [HEADER, ["a", "1M", "Vision", "x"]])
    with pytest.raises(RegistryError) as caught:
        read_registry(source, CAPABILITIES, tmp_path / "models", selection_active=True)
    assert str(caught.value) == (
        f"{source}: row 2, column 'Category': category 'Vision' is served by no selected plugin "
        "(the selected ones serve: Math, Voice); add its plugin to --plugins or remove the row")


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="teacher CSV not found: .*none.csv"):
        read_registry(tmp_path / "none.csv", CAPABILITIES, tmp_path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Model Name,Parameters,Category,Best Feature\ncaf\xe9,1M,Math,x\n".encode("latin-1"))
    with pytest.raises(RegistryError, match=r"latin.csv: not UTF-8 text"):
        read_registry(latin, CAPABILITIES, tmp_path)


UNSELECTED = UnselectedCapabilities(
    capabilities=(
        (Capability("vision", "image", ("Vision",), ("shapes QA",)), "nexus-cap-vision"),
        (Capability("reasoning", "text", ("Reasoning", "Logic"), ("MMLU",)), "nexus-cap-reasoning"),
    ),
    unreadable=(("acme-broken", "RuntimeError: acme is broken"),),
)


class _Asked:
    """An `unselected` callable that counts how often the registry asks it."""

    def __init__(self, answer: UnselectedCapabilities = UNSELECTED) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> UnselectedCapabilities:
        self.calls += 1
        return self.answer


def test_rows_of_unselected_plugins_are_left_out_and_listed(tmp_path: Path) -> None:
    source = _write(tmp_path / "teachers.csv", [
        HEADER, ["see", "1M", "Vision", "x"], ["count", "2M", "Math", "y"],
        ["think", "3M", " logic ", "z"], ["hear", "4M", "Voice", "w"],
    ])
    asked = _Asked()
    registry = read_registry(source, CAPABILITIES, tmp_path / "models", selection_active=True,
                             unselected=asked)
    assert [(e.name, e.capability, e.plugin, e.row) for e in registry.entries] == [
        ("count", "math", "nexus-cap-math", 3), ("hear", "voice", "nexus-cap-voice", 5)]
    assert registry.skipped == (
        SkippedRow(2, "see", "Vision", "vision", "nexus-cap-vision"),
        SkippedRow(4, "think", "logic", "reasoning", "nexus-cap-reasoning"),
    )
    assert registry.skipped[0].to_json() == {
        "row": 2, "name": "see", "category": "Vision", "capability": "vision", "plugin": "nexus-cap-vision"}
    assert registry.skipped_summary() == (
        "left out 2 CSV rows of unselected plugins: row 2 see (Vision, nexus-cap-vision), "
        "row 4 think (logic, nexus-cap-reasoning)")
    assert asked.calls == 1  # read once per CSV, however many rows need it


def test_unselected_plugins_are_not_consulted_when_the_selection_serves_every_row(tmp_path: Path) -> None:
    source = _write(tmp_path / "teachers.csv", [HEADER, ["count", "2M", "Math", "y"]])
    asked = _Asked()
    registry = read_registry(source, CAPABILITIES, tmp_path / "models", selection_active=True,
                             unselected=asked)
    assert [e.name for e in registry.entries] == ["count"]
    assert registry.skipped == () and registry.skipped_summary() is None
    assert asked.calls == 0


@pytest.mark.parametrize(
    ("selection_active", "message"),
    [
        (True, "category 'Chemistry' is served by no selected plugin (the selected ones serve: Math, "
               "Voice) nor by any installed unselected one (they serve: Logic, Reasoning, Vision; "
               "acme-broken could not be read: RuntimeError: acme is broken); install a plugin that "
               "serves it or remove the row"),
        (False, "unknown category 'Chemistry' (known categories: Math, Voice)"),
    ],
)
def test_a_category_no_installed_plugin_serves_is_an_error(
    tmp_path: Path, selection_active: bool, message: str
) -> None:
    source = _write(tmp_path / "teachers.csv", [
        HEADER, ["count", "2M", "Math", "y"], ["mix", "3M", "Chemistry", "z"]])
    asked = _Asked()
    with pytest.raises(RegistryError) as caught:
        read_registry(source, CAPABILITIES, tmp_path / "models", selection_active=selection_active,
                      unselected=asked)
    assert str(caught.value) == f"{source}: row 3, column 'Category': {message}"
    # Without a selection every installed plugin is loaded: there is nothing else to ask.
    assert asked.calls == int(selection_active)


def test_every_row_left_out_is_an_error(tmp_path: Path) -> None:
    source = _write(tmp_path / "teachers.csv", [HEADER, ["see", "1M", "Vision", "x"], ["think", "3M", "Reasoning", "z"]])
    with pytest.raises(RegistryError) as caught:
        read_registry(source, CAPABILITIES, tmp_path / "models", selection_active=True, unselected=_Asked())
    assert str(caught.value) == (
        f"{source}: row 2: no teachers for the selected plugins (they serve: Math, Voice); every row "
        "belongs to an unselected one: row 2 see (Vision, nexus-cap-vision), row 3 think (Reasoning, "
        "nexus-cap-reasoning); add their plugins to --plugins or add rows for the selected ones")
