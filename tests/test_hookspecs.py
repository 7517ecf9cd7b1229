"""Every hookspec is documented, typed, and routes through the plugin manager as specified."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest

from nexus_kernel import Capability, hookimpl, hookspecs
from nexus_kernel.kit.testing import plugin_module, plugin_set_of
from nexus_kernel.plugins import new_manager

REPO = Path(__file__).resolve().parents[1]
CAPABILITY_HOOKS = ["resolve_datasets", "demo_teacher", "teacher_capability", "profile_capability", "build_adapter",
                    "distill_capability", "anchor_loss", "reference_outputs", "retention_metric",
                    "package_assets", "answer"]


def test_the_hooks_are_the_designed_ones() -> None:
    assert hookspecs.hook_names() == [
        "register_capabilities", "resolve_datasets", "demo_teacher", "load_teacher", "teacher_capability",
        "profile_capability",
        "build_adapter", "distill_capability", "anchor_loss", "retention_metric", "reference_outputs",
        "quantize", "package_assets", "answer"]
    assert set(new_manager().hook.__dict__) >= set(hookspecs.hook_names())


@pytest.mark.parametrize("name", hookspecs.hook_names())
def test_every_hook_is_documented_and_typed(name: str) -> None:
    spec = getattr(hookspecs, name)
    assert "versionadded" in (spec.__doc__ or ""), f"{name} has no versionadded note"
    assert spec.__annotations__.get("return"), f"{name} has no return type"
    assert f"`{name}" in (REPO / "CONTRIBUTING.md").read_text(), f"{name} missing from CONTRIBUTING.md"


@pytest.mark.parametrize("name", CAPABILITY_HOOKS)
def test_capability_hooks_reach_only_the_owner(name: str) -> None:
    arguments = list(inspect.signature(getattr(hookspecs, name)).parameters)

    def plugin_for(capability: str) -> types.ModuleType:
        def register_capabilities() -> list[Capability]:
            return [Capability(capability, "text", (capability.title(),), ("b",))]

        # A real function with the spec's parameters (pluggy reads them from `__code__`), which
        # returns what it was given, so the test sees every argument arrive.
        namespace: dict[str, object] = {"owner": capability}
        exec(f"def answer({', '.join(arguments)}):\n"  # noqa: S102 (test code, fixed text)
             f"    return owner, dict({', '.join(f'{a}={a}' for a in arguments)})", namespace)
        return plugin_module(register_capabilities=hookimpl(register_capabilities),
                                     **{name: hookimpl(namespace["answer"])})

    plugin_set = plugin_set_of(("first", plugin_for("alpha")), ("second", plugin_for("beta")))
    kwargs = {argument: f"{argument} value" for argument in arguments}
    assert plugin_set.call_for("beta", name, **kwargs) == ("beta", kwargs)
    assert plugin_set.call_for("alpha", name, **kwargs) == ("alpha", kwargs)
