"""Per-capability settings: resolved once at the lock, recorded there, read back by later stages."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from nexus_kernel import Capability, hookimpl
from nexus_kernel.config import load_config
from nexus_kernel.errors import LockError
from nexus_kernel.kit.testing import plugin_module, plugin_set_of
from nexus_kernel.run.layout import LOCK_FILE
from nexus_kernel.run.runner import RunContext
from nexus_kernel.run.settings import CapabilitySettings, locked_settings
from nexus_kernel.stages.lock import build_scope, run_lock

DECLARED = Capability("toy", "text", ("Toys",), ("toy bench",), max_rank=12, alpha_scale=0.01, pool_scale=2.0)


def _plugin(capability: Capability) -> types.ModuleType:
    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [capability]

    return plugin_module(register_capabilities=register_capabilities)


def _context(tmp_path: Path, table: str = "") -> RunContext:
    source = tmp_path / "nexus.toml"
    source.write_text(table)
    return RunContext(tmp_path / "run", load_config(source), plugin_set_of(("toy", _plugin(DECLARED))))


def test_the_plugins_declaration_holds_where_the_config_sets_nothing() -> None:
    unset = {"max_rank": None, "alpha_scale": None, "pool_scale": None, "data_dir": None}
    assert CapabilitySettings.resolve(DECLARED, unset) == CapabilitySettings(12, 0.01, 2.0, None)


def test_each_config_key_overrides_only_itself() -> None:
    base = {"max_rank": None, "alpha_scale": None, "pool_scale": None, "data_dir": None}
    assert CapabilitySettings.resolve(DECLARED, {**base, "max_rank": 3}) == CapabilitySettings(3, 0.01, 2.0)
    assert CapabilitySettings.resolve(DECLARED, {**base, "alpha_scale": 0.5}) == CapabilitySettings(12, 0.5, 2.0)
    assert CapabilitySettings.resolve(DECLARED, {**base, "pool_scale": 0.5}) == CapabilitySettings(12, 0.01, 0.5)
    # 0 is a real setting (no anchor for this capability), not "unset".
    assert CapabilitySettings.resolve(DECLARED, {**base, "alpha_scale": 0.0}).alpha_scale == 0.0
    assert CapabilitySettings.resolve(DECLARED, {**base, "data_dir": "/data"}).data_dir == "/data"


def test_pool_size_rounds_and_keeps_at_least_one_item() -> None:
    assert CapabilitySettings(1, 1.0, 2.0).pool_size(2048) == 4096
    assert CapabilitySettings(1, 1.0, 1.0).pool_size(2048) == 2048
    assert CapabilitySettings(1, 1.0, 0.333).pool_size(100) == 33
    assert CapabilitySettings(1, 1.0, 0.01).pool_size(8) == 1


def test_the_lock_records_the_declared_settings_when_the_config_sets_none(tmp_path: Path) -> None:
    entry = build_scope(_context(tmp_path))["capabilities"]["toy"]
    # The same entry as before settings were resolved in one place: a default lock is unchanged.
    assert entry == {"name": "toy", "modality": "text", "categories": ["Toys"], "benchmarks": ["toy bench"],
                     "max_rank": 12, "output": "text", "alpha_scale": 0.01, "pool_scale": 2.0,
                     "description": "", "plugin": "test-toy", "data_dir": None}


def test_the_lock_records_the_resolved_settings_and_later_stages_read_them_back(tmp_path: Path) -> None:
    context = _context(tmp_path, "[capabilities.toy]\nalpha_scale = 0.25\npool_scale = 3.0\nmax_rank = 5\n")
    run_lock(context)
    lock = json.loads((context.run_dir / LOCK_FILE).read_text())
    entry = lock["scope"]["capabilities"]["toy"]
    assert (entry["max_rank"], entry["alpha_scale"], entry["pool_scale"]) == (5, 0.25, 3.0)
    assert locked_settings(context.run_dir) == {"toy": CapabilitySettings(5, 0.25, 3.0, None)}


@pytest.mark.parametrize(("key", "value"), [("alpha_scale", None), ("max_rank", "8"), ("pool_scale", True)])
def test_a_damaged_lock_entry_names_the_capability_and_key(tmp_path: Path, key: str, value: object) -> None:
    context = _context(tmp_path)
    run_lock(context)
    path = context.run_dir / LOCK_FILE
    lock = json.loads(path.read_text())
    lock["scope"]["capabilities"]["toy"][key] = value
    path.write_text(json.dumps(lock))
    with pytest.raises(LockError, match=rf"capability 'toy' has no valid '{key}' in its lock .*--relock"):
        locked_settings(context.run_dir)


def test_a_missing_lock_says_which_stage_writes_it(tmp_path: Path) -> None:
    with pytest.raises(LockError, match=r"global_config.json: unreadable lock .*--from lock"):
        locked_settings(tmp_path)


def test_text_loss_defaults_to_auto_is_locked_when_set_and_checked(tmp_path: Path) -> None:
    from nexus_kernel.errors import ConfigError

    unset = {"max_rank": None, "alpha_scale": None, "pool_scale": None, "data_dir": None, "text_loss": None}
    assert CapabilitySettings.resolve(DECLARED, unset).text_loss == "auto"
    assert "text_loss" not in CapabilitySettings.resolve(DECLARED, unset).to_json()  # a default lock is unchanged
    context = _context(tmp_path, '[capabilities.toy]\ntext_loss = "sequence"\n')
    run_lock(context)
    assert json.loads((context.run_dir / LOCK_FILE).read_text())["scope"]["capabilities"]["toy"]["text_loss"] == "sequence"
    assert locked_settings(context.run_dir)["toy"].text_loss == "sequence"
    path = context.run_dir / LOCK_FILE
    lock = json.loads(path.read_text())
    lock["scope"]["capabilities"]["toy"]["text_loss"] = "kl"
    path.write_text(json.dumps(lock))
    with pytest.raises(LockError, match=r"capability 'toy' has no valid 'text_loss' in its lock \(got 'kl'"):
        locked_settings(context.run_dir)
    (tmp_path / "bad").mkdir()
    with pytest.raises(ConfigError, match=r"'capabilities.toy.text_loss' must be one of auto, uld, sequence; got 'ce'"):
        _context(tmp_path / "bad", '[capabilities.toy]\ntext_loss = "ce"\n')
