"""Stage 1 on capabilities the CSV does not serve: a warning only when a demo teacher was on offer."""

from __future__ import annotations

import types
from pathlib import Path

from structlog.testing import capture_logs

from nexus_kernel import Capability, hookimpl
from nexus_kernel.config import load_config
from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.kit.testing import plugin_module, plugin_set_of
from nexus_kernel.run.runner import RunContext
from nexus_kernel.stages.registry import run_registry


def _plugin(name: str, category: str, demo: DemoTeacher | None) -> types.ModuleType:
    capability = Capability(name, "text", (category,), (f"{name} bench",))

    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [capability]

    @hookimpl
    def demo_teacher(capability: Capability, settings: object) -> DemoTeacher | None:
        return demo

    return plugin_module(name, register_capabilities=register_capabilities, demo_teacher=demo_teacher)


def _never_built(folder: Path, recipe: object, progress: object) -> None:
    raise AssertionError("no demo teacher is built in this test")


def test_an_unserved_capability_warns_only_when_it_offers_a_demo_teacher(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    (tmp_path / "teachers.csv").write_text("Model Name,Parameters,Category,Best Feature,Path\n"
                                           "mine,1M,Served,the one row,mine\n")
    (tmp_path / "nexus.toml").write_text('[registry]\ncsv = "teachers.csv"\nmodels_dir = "models"\n')
    offered = DemoTeacher("demo-loud", "loud", {}, 1, _never_built, "loud bench", 0.5)
    plugins = plugin_set_of(("served", _plugin("served", "Served", None)),
                            ("quiet", _plugin("quiet", "Quiet", None)),
                            ("loud", _plugin("loud", "Loud", offered)))
    context = RunContext(tmp_path / "run", load_config(tmp_path / "nexus.toml"), plugins)
    (tmp_path / "run").mkdir()
    with capture_logs() as events:
        summary = run_registry(context)
    assert summary.startswith("1 teachers for 1 capabilities")
    unserved = {event["capability"]: event for event in events if "no teacher in the CSV" in event["event"]}
    assert unserved["loud"]["log_level"] == "warning" and unserved["loud"]["demo_teacher"] == "demo-loud"
    assert unserved["quiet"]["log_level"] == "info"
    assert "served" not in unserved
