"""Plugin discovery, selection, loading and capability ownership.

Entry points of group `nexus` are loaded one by one; a plugin that fails to import or breaks
the hook contract is reported under its distribution's name and skipped (an error with
`strict`). An allow-list chooses plugins before anything is imported: a plugin left out is never
registered, and is imported only if asked what it declares (`PluginSet.unselected_capabilities`).
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

import pluggy

from nexus_kernel import defaults, hookspecs
from nexus_kernel.capability import Capability, UnselectedCapabilities
from nexus_kernel.errors import CapabilityConflict, PluginError
from nexus_kernel.kit.plugin_kit import CapabilityPlugin

ENTRY_POINT_GROUP = "nexus"
PLUGINS_ENV = "NEXUS_PLUGINS"


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


BUILTINS: tuple[tuple[str, object], ...] = ((defaults.NAME, defaults),)
"""The kernel's built-in plugins, `(name, plugin)`, registered before any other."""


def new_manager(builtins: Sequence[tuple[str, object]] = BUILTINS) -> pluggy.PluginManager:
    """A pluggy manager with the hookspecs and `builtins` registered."""
    manager = pluggy.PluginManager("nexus")
    manager.add_hookspecs(hookspecs)
    for name, plugin in builtins:
        manager.register(plugin, name=name)
    return manager


@dataclass(frozen=True)
class PluginRecord:
    """One plugin as the user sees it: entry-point name, distribution and version."""

    name: str
    distribution: str
    version: str
    target: str
    hooks: tuple[str, ...] = ()
    capabilities: tuple[Capability, ...] = ()
    error: str | None = None

    def matches(self, wanted: str) -> bool:
        return _normalise(wanted) in {_normalise(self.name), _normalise(self.distribution)}

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "target": self.target,
            "capabilities": [cap.describe() for cap in self.capabilities],
            "hooks": list(self.hooks),
        }
        if self.error is not None:
            described["error"] = self.error
        return described


@dataclass
class PluginSet:
    """The loaded plugins, their capabilities, and the hooks to call on them."""

    manager: pluggy.PluginManager = field(default_factory=new_manager)
    loaded: list[PluginRecord] = field(default_factory=list)
    failed: list[PluginRecord] = field(default_factory=list)
    not_selected: list[PluginRecord] = field(default_factory=list)
    builtin_names: tuple[str, ...] = tuple(name for name, _ in BUILTINS)
    _unselected: UnselectedCapabilities | None = field(default=None, init=False, repr=False)
    _owned: dict[str, tuple[Capability, PluginRecord]] | None = field(default=None, init=False, repr=False)
    _callers: dict[tuple[str, str], pluggy.HookCaller] = field(default_factory=dict, init=False, repr=False)

    def conflicts(self) -> list[str]:
        """One message per capability claimed by more than one distribution."""
        owners: dict[str, list[PluginRecord]] = {}
        for record in self.loaded:
            for capability in record.capabilities:
                owners.setdefault(capability.name, []).append(record)
        return [
            f"capability {name!r} is claimed by "
            + " and ".join(record.distribution for record in claimants)
            + "; uninstall one or pick with --plugins"
            for name, claimants in sorted(owners.items())
            if len(claimants) > 1
        ]

    def capabilities(self) -> dict[str, tuple[Capability, PluginRecord]]:
        """Capability name to (spec, owning plugin), sorted by name.

        Raises `CapabilityConflict` naming both distributions when two claim one capability.
        """
        if self._owned is None:
            conflicts = self.conflicts()
            if conflicts:
                raise CapabilityConflict("; ".join(conflicts))
            owned = {
                capability.name: (capability, record)
                for record in self.loaded
                for capability in record.capabilities
            }
            self._owned = dict(sorted(owned.items()))
        return dict(self._owned)

    def owner_of(self, capability_name: str) -> PluginRecord:
        try:
            return self.capabilities()[capability_name][1]
        except KeyError:
            known = ", ".join(self.capabilities()) or "none"
            raise PluginError(
                f"no loaded plugin provides capability {capability_name!r} (loaded: {known})"
            ) from None

    def call_for(self, capability_name: str, hook_name: str, **kwargs: Any) -> Any | None:
        """Call `hook_name` through pluggy on the plugin owning `capability_name` and the
        kernel's built-in defaults only (those are `trylast`, so the owner answers first);
        the first answer that is not None wins, None when nobody answers.

        A missing argument is a `PluginError` naming the hook and the argument.
        """
        caller = self._owner_caller(self.owner_of(capability_name).name, hook_name)
        try:
            return caller(**kwargs)
        except pluggy.HookCallError as exc:
            raise PluginError(f"hook {hook_name!r} for capability {capability_name!r}: {exc}") from None

    def teacher_capability(self, capability_name: str, folder: str) -> Capability:
        """The capability as distilled from the teacher in `folder` (`teacher_capability`
        hook): the owner's variant, or the declared capability when it gives none. A variant
        that changes more than `output` and `benchmarks` is a `PluginError`."""
        declared, record = self.capabilities()[capability_name]
        variant = self.call_for(capability_name, "teacher_capability", capability=declared, folder=str(folder))
        if variant is None:
            return declared
        if not isinstance(variant, Capability):
            raise PluginError(f"teacher_capability of {record.distribution} returned {type(variant).__name__}, "
                              "not a Capability")
        if (replace(variant, output=declared.output, benchmarks=declared.benchmarks) != declared
                or variant.rank_policy is not declared.rank_policy):
            raise PluginError(f"teacher_capability of {record.distribution} for {folder} changed more of "
                              f"capability {capability_name!r} than its output and benchmarks")
        return variant

    def _owner_caller(self, owner: str, hook_name: str) -> pluggy.HookCaller:
        """pluggy's caller for `hook_name` restricted to `owner` and the built-ins (cached)."""
        key = (owner, hook_name)
        if key not in self._callers:
            keep = {self.manager.get_plugin(name) for name in (owner, *self.builtin_names)}
            others = [plugin for plugin in self.manager.get_plugins() if plugin not in keep]
            self._callers[key] = self.manager.subset_hook_caller(hook_name, remove_plugins=others)
        return self._callers[key]

    def add(self, record: PluginRecord, plugin: object) -> PluginRecord:
        """Register `plugin` under `record.name`, validate its hooks and capabilities, and
        return the completed record. On any failure the plugin is unregistered and the error
        raised."""
        try:
            hash(plugin)
        except TypeError:
            raise PluginError(f"plugin {record.name!r} is a {type(plugin).__name__}, which pluggy cannot "
                              "track; point the entry point at a module or a CapabilityPlugin") from None
        problem = contract_problem(plugin)
        if problem is not None:
            raise PluginError(problem)
        self.manager.register(plugin, name=record.name)
        try:
            self.manager.check_pending()
            capabilities = _declared_capabilities(self.manager, plugin)
        except Exception:
            self.manager.unregister(plugin)
            raise
        self._owned = None
        self._callers.clear()
        callers = self.manager.get_hookcallers(plugin) or ()
        added = PluginRecord(
            name=record.name,
            distribution=record.distribution,
            version=record.version,
            target=record.target,
            hooks=tuple(sorted(caller.name for caller in callers)),
            capabilities=capabilities,
        )
        self.loaded.append(added)
        return added

    def unselected_capabilities(self) -> UnselectedCapabilities:
        """The capabilities the plugins in `not_selected` declare, read on the first call only.

        Each such plugin is imported and its `register_capabilities` called, but it is never
        registered in `manager`, so none of its other hooks can run. A plugin that fails to
        import or to declare is listed in `unreadable` instead of raising.
        """
        if self._unselected is None:
            declared: list[tuple[Capability, str]] = []
            unreadable: list[tuple[str, str]] = []
            for record in self.not_selected:
                try:
                    capabilities = read_declared_capabilities(record)
                except Exception as exc:  # a third-party plugin may raise anything on import
                    unreadable.append((record.distribution, f"{type(exc).__name__}: {exc}"))
                    continue
                declared += [(capability, record.distribution) for capability in capabilities]
            self._unselected = UnselectedCapabilities(tuple(declared), tuple(unreadable))
        return self._unselected

    def versions(self) -> dict[str, str]:
        """Distribution name to version of every loaded plugin, for the config lock."""
        return {record.distribution: record.version for record in self.loaded}

    def describe(self) -> dict[str, Any]:
        return {
            "plugins": [record.describe() for record in self.loaded],
            "failed": [record.describe() for record in self.failed],
            "not_selected": [record.name for record in self.not_selected],
            "conflicts": self.conflicts(),
        }


def parse_allow_list(text: str) -> frozenset[str]:
    """`"reasoning, voice"` to `{"reasoning", "voice"}`; an empty string selects nothing."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def choose_allow_list(
    cli_value: str | None,
    environ: Mapping[str, str],
    configured: Sequence[str] = (),
) -> frozenset[str] | None:
    """The allow-list in force: `--plugins`, else `NEXUS_PLUGINS`, else the config's
    `plugins.enabled`; None (every installed plugin) when none of them is set."""
    if cli_value is not None:
        return parse_allow_list(cli_value)
    if PLUGINS_ENV in environ:
        return parse_allow_list(environ[PLUGINS_ENV])
    if configured:
        return frozenset(configured)
    return None


def _describe_entry_point(entry_point: metadata.EntryPoint) -> PluginRecord:
    dist = entry_point.dist
    return PluginRecord(
        name=entry_point.name,
        distribution=dist.metadata["Name"] if dist is not None else entry_point.value,
        version=dist.version if dist is not None else "unknown",
        target=entry_point.value,
    )


def _declared_capabilities(manager: pluggy.PluginManager, plugin: object) -> tuple[Capability, ...]:
    others = [other for other in manager.get_plugins() if other is not plugin]
    answers = manager.subset_hook_caller("register_capabilities", remove_plugins=others)()
    declared: list[Capability] = []
    for capability in (item for answer in answers for item in (answer or ())):
        if not isinstance(capability, Capability):
            raise TypeError(
                f"register_capabilities returned {type(capability).__name__}, not Capability"
            )
        declared.append(capability)
    names = [capability.name for capability in declared]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TypeError(f"declares capability {repeated[0]!r} more than once")
    return tuple(declared)


def contract_problem(plugin: object) -> str | None:
    """Why `plugin`, as an entry point loaded it, cannot be registered as meant, or None.

    Two mistakes would otherwise pass silently: a module that still carries the hooks an older
    kernel's `plugin_kit.standard_hooks` bound by position (nexus-kernel 0.1), and an entry
    point naming a package module that holds a `CapabilityPlugin` instead of the instance
    itself (pluggy would find no hooks on the module, and the capability would vanish).
    """
    name = getattr(plugin, "__name__", repr(plugin))
    bound_by_position = getattr(plugin, "register_capabilities", None)
    if "standard_hooks.<locals>." in getattr(bound_by_position, "__qualname__", ""):
        return (f"{name!r} binds its hooks with plugin_kit.standard_hooks (nexus-kernel 0.1); declare "
                "`plugin = CapabilityPlugin(CAPABILITY, teacher=..., student=..., synthetic=...)` "
                "and point the entry point at it (CONTRIBUTING.md)")
    if isinstance(plugin, ModuleType) and bound_by_position is None:
        held = sorted(key for key, value in vars(plugin).items() if isinstance(value, CapabilityPlugin))
        if held:
            return (f"the entry point names module {name!r}, which holds CapabilityPlugin "
                    f"{held[0]!r}; point it at \"{name}:{held[0]}\"")
    return None


def read_declared_capabilities(record: PluginRecord) -> tuple[Capability, ...]:
    """Import the plugin `record` describes and return what its `register_capabilities` declares.

    The plugin is registered only in a throwaway manager (which validates its hook signatures)
    and its other hooks are never called. Raises whatever importing or declaring raises.
    """
    plugin = metadata.EntryPoint(record.name, record.target, ENTRY_POINT_GROUP).load()
    scratch = new_manager()
    scratch.register(plugin, name=record.name)
    return _declared_capabilities(scratch, plugin)


def _unknown_names_error(wanted: Iterable[str], records: Sequence[PluginRecord]) -> str | None:
    missing = [name for name in sorted(wanted) if not any(r.matches(name) for r in records)]
    if not missing:
        return None
    installed = sorted({record.name for record in records})
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, installed, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (
        "--plugins/NEXUS_PLUGINS names no installed plugin: "
        + ", ".join(hints)
        + f"; installed: {', '.join(installed) or 'none'}"
    )


def load_plugins(
    allow: frozenset[str] | None = None,
    *,
    always: Iterable[str] = (),
    strict: bool = False,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    builtins: Sequence[tuple[str, object]] | None = None,
) -> PluginSet:
    """Load the selected plugins of group `nexus`.

    `allow` lists entry-point or distribution names to load (None: all; empty: none), and
    `always` names plugins loaded whatever the allow-list says (infrastructure such as
    `quant-bnb`). Plugins left out go to `not_selected`, neither imported nor registered. A
    plugin that fails is recorded in `failed` and skipped, or raises `PluginError` when
    `strict`. `entry_points` replaces discovery (tests); `builtins` are `(name, object)` pairs
    registered before any plugin as the defaults every owner-only call falls back to (the
    kernel's `nexus_kernel.defaults` unless given).
    """
    if builtins is None:
        builtins = BUILTINS
    manager = new_manager(builtins)
    found = list(
        metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    )
    candidates = [(_describe_entry_point(ep), ep) for ep in found]
    plugin_set = PluginSet(manager=manager, builtin_names=tuple(name for name, _ in builtins))
    if allow is not None:
        problem = _unknown_names_error(allow, [record for record, _ in candidates])
        if problem:
            raise PluginError(problem)
    always_set = frozenset(always)
    for record, entry_point in sorted(candidates, key=lambda pair: pair[0].name):
        wanted = allow is None or any(record.matches(name) for name in allow | always_set)
        if not wanted:
            plugin_set.not_selected.append(record)
            continue
        try:
            plugin_set.add(record, entry_point.load())
        except Exception as exc:  # a third-party plugin may raise anything on import
            reason = f"{type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(
                    f"plugin {record.name!r} from distribution {record.distribution} "
                    f"failed to load: {reason}"
                ) from exc
            plugin_set.failed.append(
                PluginRecord(record.name, record.distribution, record.version, record.target,
                             error=reason)
            )
    manager.check_pending()
    return plugin_set
