"""Open modalities: any lower-case identifier is a modality; text is read as tokens, every
other modality through the input projector its owner's `build_adapter` supplies."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from nexus_kernel import Capability, hookimpl
from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import StageError
from nexus_kernel.kit.testing import plugin_module, plugin_set_of
from nexus_kernel.student.build import adapter_for
from nexus_kernel.student.model import CapabilityAdapter


class _Frames(nn.Module):
    """A stand-in projector: `(batch, 3, 8)` clips into `(batch, 3, hidden)` tokens."""

    input_shape = (3, 8)

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(8, hidden)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.linear(clips)


def _plugin(modality: str, build: object = None) -> types.ModuleType:
    """A plugin declaring capability `clips` of `modality`, with `build(spec)` as its
    `build_adapter` when given."""
    @hookimpl
    def register_capabilities() -> list[Capability]:
        return [Capability("clips", modality, ("Clips",), ("clip bench",))]

    hooks: dict[str, object] = {"register_capabilities": register_capabilities}
    if build is not None:
        @hookimpl
        def build_adapter(capability: Capability, spec: AdapterSpec) -> CapabilityAdapter:
            return build(spec)  # type: ignore[operator]
        hooks["build_adapter"] = build_adapter
    return plugin_module(**hooks)


def _adapter(modality: str, build: object = None) -> CapabilityAdapter:
    plugins = plugin_set_of(("clips", _plugin(modality, build)))
    capability, _ = plugins.capabilities()["clips"]
    spec = AdapterSpec("clips", 2, 16, {}, input_projector=capability.input_projector)
    return adapter_for(plugins, "clips", spec)


@pytest.mark.parametrize("modality", ["text", "image", "audio", "video", "point_cloud", "x3"])
def test_any_lower_case_identifier_is_a_modality(modality: str) -> None:
    capability = Capability("clips", modality, ("Clips",), ("clip bench",))
    assert capability.modality == modality
    assert capability.input_projector == (None if modality == "text" else modality)


@pytest.mark.parametrize("modality", ["Video", "", "3d", "point cloud", "vid-eo", None])
def test_a_modality_that_is_not_an_identifier_is_refused_naming_the_capability(modality: object) -> None:
    with pytest.raises(ValueError, match=r"capability 'clips': modality .* must be a lower-case identifier"):
        Capability("clips", modality, ("Clips",), ("clip bench",))  # type: ignore[arg-type]


def test_a_text_capability_without_build_adapter_gets_the_kernels_adapter_with_no_projector() -> None:
    adapter = _adapter("text")
    assert isinstance(adapter, CapabilityAdapter) and adapter.projector is None
    assert adapter.spec.input_projector is None


def test_a_new_modality_reads_through_the_projector_its_plugin_supplies() -> None:
    adapter = _adapter("video", lambda spec: CapabilityAdapter(spec, _Frames(spec.hidden_size)))
    assert adapter.spec.input_projector == "video"
    assert isinstance(adapter.projector, _Frames)


def test_a_new_modality_whose_plugin_builds_no_adapter_is_an_error_naming_all_three() -> None:
    with pytest.raises(StageError) as error:
        _adapter("video")
    message = str(error.value)
    assert "capability 'clips'" in message and "video modality" in message and "test-clips" in message
    assert "input projector" in message


def test_a_new_modality_whose_adapter_has_no_projector_is_an_error_naming_all_three() -> None:
    with pytest.raises(StageError) as error:
        _adapter("video", lambda spec: CapabilityAdapter(spec))
    message = str(error.value)
    assert "capability 'clips'" in message and "video modality" in message and "test-clips" in message
    assert "without an input projector" in message
