"""Config validation: every mistake names its dotted key path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nexus_kernel.config import CAPABILITY_KEYS, SCHEMA, load_config, validate
from nexus_kernel.errors import ConfigError
from nexus_kernel.run.fsio import canonical_json

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text(text)
    return path


def test_default_config_loads_with_every_key_resolved() -> None:
    config = load_config(REPO / "configs" / "nexus.toml")
    assert config.section("run") == {"name": "demo", "seed": 42}
    assert config.section("hardware") == {"memory_budget_gb": 16.0, "device": "auto"}
    registry = config.section("registry")
    assert registry["csv"] == str(REPO / "configs" / "ModelName-Parameters-Category-BestFeature.csv")
    assert registry["models_dir"] == str(REPO / "models")
    assert set(config.values) == {*SCHEMA, "capabilities"}


def test_empty_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config.section("run")["seed"] == 42
    assert config.section("plugins") == {"enabled": [], "always_load": ["quant-bnb"]}
    assert config.section("registry")["models_dir"] == str(tmp_path / "models")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hardware]\nmemory_budget = 8\n",
         "unknown key 'hardware.memory_budget' (did you mean 'hardware.memory_budget_gb'?)"),
        ("[hardwre]\ndevice = 'cpu'\n", "unknown key 'hardwre' (did you mean 'hardware'?)"),
        ("[run]\nseed = '42'\n", "key 'run.seed' must be an integer, got str '42'"),
        ("[run]\nseed = true\n", "key 'run.seed' must be an integer, got bool True"),
        ("[run]\nseed = -1\n", "key 'run.seed' must be >= 0 and <= 4294967295; got -1"),
        ("[run]\nseed = 4294967296\n", "key 'run.seed' must be >= 0 and <= 4294967295; got 4294967296"),
        ("[hardware]\ndevice = 'tpu'\n", "key 'hardware.device' must be one of auto, cpu, cuda; got 'tpu'"),
        ("[plugins]\nenabled = 'math'\n", "key 'plugins.enabled' must be a list of strings, got str 'math'"),
        ("run = 3\n", "key 'run' must be a table ([run])"),
        ("[capabilities.math]\nmax_rnk = 8\n",
         "unknown key 'capabilities.math.max_rnk' (did you mean 'capabilities.math.max_rank'?)"),
        ("[capabilities.math]\nmax_rank = 0\n", "key 'capabilities.math.max_rank' must be >= 1; got 0"),
        ("[registry]\ncsv = ''\n", "key 'registry.csv' must be a path string, got str ''"),
        ("[run\nname = 'x'\n", "invalid TOML"),
        ("[hardware]\nmemory_budget_gb = nan\n", "key 'hardware.memory_budget_gb' must be a finite number; got nan"),
        ("[distill]\nspike_factor = inf\n", "key 'distill.spike_factor' must be a finite number; got inf"),
        ("[distill]\nalpha = -inf\n", "key 'distill.alpha' must be a finite number; got -inf"),
        ("[capabilities.math]\npool_scale = nan\n",
         "key 'capabilities.math.pool_scale' must be a finite number; got nan"),
        ("[hardware]\nmemory_budget_gb = 0.25\n",
         "key 'hardware.memory_budget_gb' must be >= 0.5 and <= 100000.0; got 0.25"),
        ("[hardware]\nmemory_budget_gb = 1" + "0" * 400 + "\n",
         "key 'hardware.memory_budget_gb' must be >= 0.5 and <= 100000.0; got 1" + "0" * 400),
        ("[profiling]\nvariance_threshold = 5.0\n",
         "key 'profiling.variance_threshold' must be > 0.0 and <= 1.0; got 5.0"),
        ("[profiling]\nvariance_threshold = 0.0\n",
         "key 'profiling.variance_threshold' must be > 0.0 and <= 1.0; got 0.0"),
        ("[distill]\nlr_backoff = 0.0\n", "key 'distill.lr_backoff' must be > 0.0 and <= 1.0; got 0.0"),
        ("[distill]\nlearning_rate = 0\n", "key 'distill.learning_rate' must be > 0.0 and <= 1.0; got 0"),
        ("[distill]\njoint_learning_rate = 0.0\n",
         "key 'distill.joint_learning_rate' must be > 0.0 and <= 1.0; got 0.0"),
        ("[distill]\nspike_factor = 1.0\n", "key 'distill.spike_factor' must be > 1.0 and <= 1000.0; got 1.0"),
        ("[distill]\ndrift_threshold = 1.5\n", "key 'distill.drift_threshold' must be >= 0.0 and <= 1.0; got 1.5"),
        ("[package]\nmax_fp32_ratio = 1.5\n", "key 'package.max_fp32_ratio' must be > 0.0 and <= 1.0; got 1.5"),
        ("[package]\nmax_size_gb = 0\n", "key 'package.max_size_gb' must be > 0.0 and <= 10000.0; got 0"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


NAME_RULE = ("must be a name of 1-128 letters, digits, '.', '_' or '-' starting with a letter, digit "
             "or '_' (it names a folder); got ")


@pytest.mark.parametrize(
    ("toml_value", "shown"),
    [
        ("'../../../x'", "'../../../x'"),
        ("''", "''"),
        ("'a/b'", "'a/b'"),
        ("'.hidden'", "'.hidden'"),
        ("'..'", "'..'"),
        ("'a\\b'", "'a\\\\b'"),
        ("'-rf'", "'-rf'"),
        ('"a\\u0000b"', "'a\\x00b'"),
        ('"a\\tb"', "'a\\tb'"),
        ('"caf\\u00e9"', "'caf\u00e9'"),
        ("'" + "x" * 129 + "'", "'" + "x" * 129 + "'"),
    ],
)
def test_run_name_must_be_one_safe_path_component(tmp_path: Path, toml_value: str, shown: str) -> None:
    path = _config(tmp_path, f"[run]\nname = {toml_value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: key 'run.name' {NAME_RULE}{shown}"


@pytest.mark.parametrize("name", ["demo", "run-2024_01.v2", "_x", "7", "x" * 128])
def test_safe_run_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert load_config(_config(tmp_path, f"[run]\nname = '{name}'\n")).section("run")["name"] == name


def test_every_float_key_is_bounded_and_every_default_is_valid(tmp_path: Path) -> None:
    tables = {**{f"{section}.": keys for section, keys in SCHEMA.items()}, "capabilities.x.": CAPABILITY_KEYS}
    for prefix, keys in tables.items():
        for name, key in keys.items():
            if key.kind == "float":
                assert key.minimum is not None and key.maximum is not None, f"{prefix}{name} has no range"
    validate(tmp_path / "nexus.toml", {
        **{section: {name: key.default for name, key in keys.items()} for section, keys in SCHEMA.items()},
        "capabilities": {"x": {"alpha_scale": 1.0, "pool_scale": 1.0}},
    })


def test_canonical_json_refuses_non_finite_numbers() -> None:
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            canonical_json({"hardware": {"memory_budget_gb": value}})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*absent.toml"):
        load_config(tmp_path / "absent.toml")


def test_capability_tables_are_checked_against_installed_capabilities(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "[capabilities.mathh]\nmax_rank = 8\n"))
    unset = {"alpha_scale": None, "pool_scale": None, "data_dir": None, "text_loss": None}
    assert config.capability_settings("mathh") == {"max_rank": 8, **unset}
    assert config.capability_settings("voice") == {"max_rank": None, **unset}
    with pytest.raises(ConfigError, match=r"unknown key 'capabilities.mathh': no installed plugin "
                                          r"provides capability 'mathh' \(did you mean 'capabilities.math'\?\)"):
        config.check_capability_names(["math", "voice"])
