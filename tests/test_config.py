"""Config validation: every mistake names its dotted key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_kernel.config import SCHEMA, load_config
from nexus_kernel.errors import ConfigError

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
        ("[run]\nseed = -1\n", "key 'run.seed' must be >= 0; got -1"),
        ("[hardware]\ndevice = 'tpu'\n", "key 'hardware.device' must be one of auto, cpu, cuda; got 'tpu'"),
        ("[plugins]\nenabled = 'math'\n", "key 'plugins.enabled' must be a list of strings, got str 'math'"),
        ("run = 3\n", "key 'run' must be a table ([run])"),
        ("[capabilities.math]\nmax_rnk = 8\n",
         "unknown key 'capabilities.math.max_rnk' (did you mean 'capabilities.math.max_rank'?)"),
        ("[capabilities.math]\nmax_rank = 0\n", "key 'capabilities.math.max_rank' must be >= 1; got 0"),
        ("[registry]\ncsv = ''\n", "key 'registry.csv' must be a path string, got str ''"),
        ("[run\nname = 'x'\n", "invalid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*absent.toml"):
        load_config(tmp_path / "absent.toml")


def test_capability_tables_are_checked_against_installed_capabilities(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "[capabilities.mathh]\nmax_rank = 8\n"))
    assert config.capability_settings("mathh") == {"max_rank": 8, "alpha_scale": None, "pool_scale": None, "data_dir": None}
    assert config.capability_settings("voice") == {"max_rank": None, "alpha_scale": None, "pool_scale": None, "data_dir": None}
    with pytest.raises(ConfigError, match=r"unknown key 'capabilities.mathh': no installed plugin "
                                          r"provides capability 'mathh' \(did you mean 'capabilities.math'\?\)"):
        config.check_capability_names(["math", "voice"])
