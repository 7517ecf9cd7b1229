"""Plugin discovery, selection, failure handling, ownership and the `nexus plugins` command."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_helpers import (
    CAPABILITY_PLUGINS,
    install_fake_distribution,
    nexus,
    require_plugins,
)

from nexus_kernel import Capability, hookimpl
from nexus_kernel.errors import CapabilityConflict, PluginError
from nexus_kernel.kit.testing import plugin_module, plugin_set_of
from nexus_kernel.plugins import choose_allow_list, load_plugins, parse_allow_list
from nexus_kernel.teachers.registry import SkippedRow, read_registry

CLAIMS_VISION = """
from nexus_kernel import Capability, hookimpl

@hookimpl
def register_capabilities():
    return [Capability("vision", "image", ("Images",), ("acme QA",))]
"""

RAISES_ON_IMPORT = "raise RuntimeError('acme is broken')\n"

# Records every hook call, so a test can tell which of its hooks ever ran.
SPY = """
from nexus_kernel import Capability, hookimpl

CALLS = []

@hookimpl
def register_capabilities():
    CALLS.append("register_capabilities")
    return [Capability("spy", "text", ("Spying",), ("spy bench",))]

@hookimpl
def resolve_datasets(capability, settings):
    CALLS.append("resolve_datasets")
    return {"test": "synthetic:spy"}
"""


def _capability_plugin(name: str, category: str = "Cat") -> types.ModuleType:
    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [Capability(name, "text", (category,), ("bench",))]

    return plugin_module(register_capabilities=register_capabilities)


def _entry_points(site: Path, group: str = "nexus") -> list[metadata.EntryPoint]:
    sys.path.insert(0, str(site))
    try:
        return [ep for dist in metadata.distributions(path=[str(site)]) for ep in dist.entry_points
                if ep.group == group]
    finally:
        sys.path.remove(str(site))


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    install_fake_distribution(site, "acme-vision", "acme_vision", CLAIMS_VISION, "acme")
    install_fake_distribution(site, "acme-broken", "acme_broken", RAISES_ON_IMPORT)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_allow_list_parsing_and_precedence() -> None:
    assert parse_allow_list(" reasoning, voice ,") == frozenset({"reasoning", "voice"})
    assert parse_allow_list("") == frozenset()
    assert choose_allow_list("math", {"NEXUS_PLUGINS": "voice"}, ["vision"]) == {"math"}
    assert choose_allow_list(None, {"NEXUS_PLUGINS": "voice"}, ["vision"]) == {"voice"}
    assert choose_allow_list(None, {"NEXUS_PLUGINS": ""}, ["vision"]) == frozenset()
    assert choose_allow_list(None, {}, ["vision"]) == {"vision"}
    assert choose_allow_list(None, {}, []) is None


def test_broken_plugin_is_reported_by_distribution_and_skipped(fake_site: Path) -> None:
    plugin_set = load_plugins(None, entry_points=_entry_points(fake_site))
    assert [r.distribution for r in plugin_set.loaded] == ["acme-vision"]
    assert [(r.distribution, r.error) for r in plugin_set.failed] == [
        ("acme-broken", "RuntimeError: acme is broken")]


def test_strict_makes_a_broken_plugin_an_error(fake_site: Path) -> None:
    with pytest.raises(PluginError, match=r"plugin 'acme_broken' from distribution acme-broken "
                                          r"failed to load: RuntimeError: acme is broken"):
        load_plugins(None, strict=True, entry_points=_entry_points(fake_site))


def test_plugins_outside_the_allow_list_are_never_imported(fake_site: Path) -> None:
    plugin_set = load_plugins(frozenset({"acme"}), entry_points=_entry_points(fake_site))
    assert [r.name for r in plugin_set.loaded] == ["acme"]
    assert [r.name for r in plugin_set.not_selected] == ["acme_broken"]
    assert plugin_set.failed == []  # the broken one was never imported
    by_distribution = load_plugins(frozenset({"acme-vision"}), entry_points=_entry_points(fake_site))
    assert [r.name for r in by_distribution.loaded] == ["acme"]


@pytest.fixture
def spy_site(fake_site: Path) -> Iterator[Path]:
    """`fake_site` plus `acme-spy` (module `acme_spy`), imported afresh by the test using it."""
    install_fake_distribution(fake_site, "acme-spy", "acme_spy", SPY, "spy")
    yield fake_site
    sys.modules.pop("acme_spy", None)


def test_unselected_plugins_declare_capabilities_but_are_never_registered(
    spy_site: Path, tmp_path: Path
) -> None:
    plugin_set = load_plugins(frozenset({"acme"}), entry_points=_entry_points(spy_site))
    assert [r.name for r in plugin_set.not_selected] == ["acme_broken", "spy"]
    assert "acme_spy" not in sys.modules  # loading a selection imports nothing else
    source = tmp_path / "teachers.csv"
    source.write_text("Model Name,Parameters,Category,Best Feature\n"
                      "eye,1M,Images,x\nsnoop,2M,spying,y\nagent,3M,Spying,z\n")
    registry = read_registry(source, {"vision": (plugin_set.capabilities()["vision"][0], "acme-vision")},
                             tmp_path / "models", selection_active=True,
                             unselected=plugin_set.unselected_capabilities)
    assert [e.name for e in registry.entries] == ["eye"]
    assert registry.skipped == (SkippedRow(3, "snoop", "spying", "spy", "acme-spy"),
                                SkippedRow(4, "agent", "Spying", "spy", "acme-spy"))
    declared = plugin_set.unselected_capabilities()
    assert [(capability.name, plugin) for capability, plugin in declared.capabilities] == [("spy", "acme-spy")]
    assert declared.unreadable == (("acme-broken", "RuntimeError: acme is broken"),)

    assert plugin_set.manager.get_plugin("spy") is None
    assert [r.name for r in plugin_set.loaded] == ["acme"] and plugin_set.failed == []
    vision = plugin_set.capabilities()["vision"][0]
    assert plugin_set.manager.hook.resolve_datasets(capability=vision, settings={}) is None
    assert sys.modules["acme_spy"].CALLS == ["register_capabilities"]  # read once, nothing else ran


def test_an_empty_allow_list_loads_nothing_but_always_load(fake_site: Path) -> None:
    plugin_set = load_plugins(frozenset(), always=["acme"], entry_points=_entry_points(fake_site))
    assert [r.name for r in plugin_set.loaded] == ["acme"]


def test_unknown_allow_list_name_suggests_the_nearest(fake_site: Path) -> None:
    with pytest.raises(PluginError, match=r"names no installed plugin: 'acmee' \(did you mean 'acme'\?\)"):
        load_plugins(frozenset({"acmee"}), entry_points=_entry_points(fake_site))


def test_misspelt_hook_fails_check_pending() -> None:
    @hookimpl
    def register_capabilitys() -> list[Capability]:
        return []

    misspelt = plugin_module(register_capabilitys=register_capabilitys)
    with pytest.raises(Exception, match="unknown hook 'register_capabilitys'"):
        plugin_set_of(("misspelt", misspelt))


def test_plugin_declaring_a_capability_twice_is_rejected() -> None:
    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [Capability("twice", "text", ("A",), ("b",))] * 2

    with pytest.raises(TypeError, match="declares capability 'twice' more than once"):
        plugin_set_of(("twice", plugin_module(register_capabilities=register_capabilities)))


def test_conflict_names_both_distributions() -> None:
    plugin_set = plugin_set_of(("one", _capability_plugin("vision")), ("two", _capability_plugin("vision")))
    with pytest.raises(CapabilityConflict, match=r"capability 'vision' is claimed by test-one and "
                                                 r"test-two; uninstall one or pick with --plugins"):
        plugin_set.capabilities()


def test_call_for_asks_only_the_owner_then_builtins() -> None:
    calls: list[str] = []

    def owner(name: str, answer: dict[str, str] | None) -> types.ModuleType:
        plugin = _capability_plugin(name)

        @hookimpl
        def resolve_datasets(capability: Capability, settings: dict) -> dict[str, str] | None:
            calls.append(f"{name}:{capability.name}")
            return answer

        plugin.resolve_datasets = resolve_datasets
        return plugin

    @hookimpl(trylast=True)
    def default_datasets(capability: Capability, settings: dict) -> dict[str, str]:
        calls.append(f"default:{capability.name}")
        return {"test": "default.jsonl"}

    builtin = plugin_module(resolve_datasets=default_datasets)
    plugin_set = plugin_set_of(("a", owner("alpha", {"test": "a.jsonl"})), ("b", owner("beta", None)),
                               builtins=[("kernel-defaults", builtin)])
    alpha = plugin_set.capabilities()["alpha"][0]
    assert plugin_set.call_for("alpha", "resolve_datasets", capability=alpha, settings={}) == {"test": "a.jsonl"}
    assert calls == ["alpha:alpha"]  # the owner answered: neither beta nor the default was asked
    calls.clear()
    beta = plugin_set.capabilities()["beta"][0]
    answer = plugin_set.call_for("beta", "resolve_datasets", capability=beta, settings={})
    assert answer == {"test": "default.jsonl"}
    assert calls == ["beta:beta", "default:beta"]  # owner first, then the built-in default
    with pytest.raises(PluginError, match="no loaded plugin provides capability 'gamma'"):
        plugin_set.call_for("gamma", "resolve_datasets", capability=beta, settings={})


def test_a_missing_hook_argument_names_the_hook_and_the_argument() -> None:
    plugin = _capability_plugin("alpha")

    @hookimpl
    def resolve_datasets(capability: Capability, settings: dict) -> dict[str, str]:
        return {"test": "a.jsonl"}

    plugin.resolve_datasets = resolve_datasets
    plugin_set = plugin_set_of(("a", plugin))
    with pytest.warns(UserWarning), pytest.raises(PluginError, match="resolve_datasets.*'alpha'.*settings"):
        plugin_set.call_for("alpha", "resolve_datasets", capability=plugin_set.capabilities()["alpha"][0])


def test_the_kernel_defaults_answer_after_the_owner() -> None:
    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.student.model import CapabilityAdapter

    plugin_set = plugin_set_of(("a", _capability_plugin("alpha")))
    alpha = plugin_set.capabilities()["alpha"][0]
    spec = AdapterSpec(capability="alpha", rank=2, hidden_size=8, targets={"layers.0.q_proj": (8, 8)})
    assert isinstance(plugin_set.call_for("alpha", "build_adapter", capability=alpha, spec=spec),
                      CapabilityAdapter)
    projected = AdapterSpec(capability="alpha", rank=2, hidden_size=8, targets={"layers.0.q_proj": (8, 8)},
                            input_projector="image")
    assert plugin_set.call_for("alpha", "build_adapter", capability=alpha, spec=projected) is None


def test_nexus_plugins_json_lists_the_shipped_capabilities_with_versions(tmp_path: Path) -> None:
    require_plugins(*(f"nexus_cap_{name}" for name in CAPABILITY_PLUGINS), "nexus_quant_bnb")
    result = nexus("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    capabilities = {cap["name"]: (plugin["distribution"], plugin["version"])
                    for plugin in listed["plugins"] for cap in plugin["capabilities"]}
    assert capabilities == {
        name: (f"nexus-cap-{name}", metadata.version(f"nexus-cap-{name}"))
        for name in CAPABILITY_PLUGINS
    }
    hooks = {plugin["name"]: plugin["hooks"] for plugin in listed["plugins"]}
    assert all(hooks[name] == ["answer", "build_adapter", "demo_teacher", "distill_capability", "package_assets",
                               "profile_capability", "reference_outputs", "register_capabilities",
                               "resolve_datasets", "retention_metric", "teacher_capability"]
               for name in capabilities)
    assert hooks["quant-bnb"] == ["quantize"]


def test_cli_reports_a_broken_plugin_and_a_conflict(tmp_path: Path, project: Path) -> None:
    site = tmp_path / "site"
    install_fake_distribution(site, "acme-vision", "acme_vision", CLAIMS_VISION, "acme")
    install_fake_distribution(site, "acme-broken", "acme_broken", RAISES_ON_IMPORT)
    listing = nexus("plugins", cwd=project, extra_path=site)
    assert listing.returncode == 0
    assert ("warning: plugin 'acme_broken' from distribution acme-broken failed to load and was "
            "skipped: RuntimeError: acme is broken") in listing.stderr
    assert "CONFLICT: capability 'vision' is claimed by acme-vision and nexus-cap-vision" in listing.stdout
    run = nexus("run", cwd=project, extra_path=site)
    assert run.returncode == 2
    assert ("error: capability 'vision' is claimed by acme-vision and nexus-cap-vision; "
            "uninstall one or pick with --plugins") in run.stderr
    assert not (project / "runs").exists()  # refused before anything was written
    strict = nexus("plugins", "--strict", cwd=project, extra_path=site)
    assert strict.returncode == 2 and "acme-broken failed to load" in strict.stderr


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["run", "--help"]])
def test_help_and_plugins_do_not_import_torch(tmp_path: Path, args: list[str]) -> None:
    probe = (
        "import sys\nfrom nexus_kernel.cli import cli\n"
        f"code = cli.main(args={args!r}, standalone_mode=False)\n"
        "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-ABSENT', file=sys.stderr)\n"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "TORCH-ABSENT"


def test_a_teacher_capability_variant_may_change_only_output_and_benchmarks(tmp_path: Path) -> None:
    """The `teacher_capability` hook: None keeps the declaration; a variant is used as given
    when it changes only `output` and `benchmarks`; anything else is a PluginError naming the
    distribution; stage 1's record rebuilds the variant without asking the plugin again."""
    from dataclasses import replace

    from nexus_kernel.run.layout import REGISTRY_FILE
    from nexus_kernel.teachers.binding import bound_capability

    declared = Capability("sight", "image", ("Vision",), ("sight QA",))
    embedding = replace(declared, output="embedding", benchmarks=("sight centroid",))
    answers = {"qa": None, "encoder": embedding, "renamed": replace(embedding, modality="video"),
               "ranked": replace(embedding, rank_policy=lambda dim, ceiling: 1), "wrong": "embedding"}

    def register_capabilities() -> list[Capability]:
        return [declared]

    def teacher_capability(capability: Capability, folder: str) -> object:
        return answers[Path(folder).name]

    plugin_set = plugin_set_of(("sight", plugin_module(register_capabilities=hookimpl(register_capabilities),
                                                       teacher_capability=hookimpl(teacher_capability))))
    assert plugin_set.teacher_capability("sight", str(tmp_path / "qa")) == declared
    assert plugin_set.teacher_capability("sight", str(tmp_path / "encoder")) == embedding
    with pytest.raises(PluginError, match=r"teacher_capability of test-sight for .*renamed changed more of "
                                          r"capability 'sight' than its output and benchmarks"):
        plugin_set.teacher_capability("sight", str(tmp_path / "renamed"))
    with pytest.raises(PluginError, match="changed more of capability 'sight'"):
        plugin_set.teacher_capability("sight", str(tmp_path / "ranked"))
    with pytest.raises(PluginError, match="teacher_capability of test-sight returned str, not a Capability"):
        plugin_set.teacher_capability("sight", str(tmp_path / "wrong"))

    assert bound_capability(plugin_set, tmp_path, "sight") == declared  # no registry yet
    (tmp_path / REGISTRY_FILE).parent.mkdir(parents=True)
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"teachers": [
        {"capability": "sight", "path": str(tmp_path / "gone"), "output": "embedding",
         "benchmarks": ["sight centroid"]}]}))
    assert bound_capability(plugin_set, tmp_path, "sight") == embedding  # the folder is never read
