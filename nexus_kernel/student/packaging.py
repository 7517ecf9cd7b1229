"""The packaged student: what stage 6 exports into a bundle and what `load_bundle` rebuilds.

A bundle holds the backbone's config and tokenizer, and per module (the backbone, then each
capability's adapter without its training-only anchor projections) the quantized state as
safetensors. The manifest's `student` section says how to rebuild it: the adapter specs, the
scheme and which quantizer (a plugin's name, or `nexus-kernel`) made each module. Loading
builds the same modules from the specs (each owner's `build_adapter`), quantizes them the same
way and loads the saved state strictly, after `verify_bundle` has checked every checksum and
`check_package_schema` the shape of the manifest's `capabilities` and `student` sections.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nexus_kernel.algorithms.quantize import KERNEL, quantize_embeddings, quantize_module
from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.plugins import PluginSet
from nexus_kernel.student.build import adapter_for
from nexus_kernel.student.bundle import MANIFEST, BundleError, verify_bundle
from nexus_kernel.student.model import (
    NexusStudent,
    StudentCapability,
)

BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"
WEIGHTS = {"backbone": "backbone.safetensors"}
EMBEDDINGS = "backbone.embeddings"
"""The `quantizers` entry for the backbone's embedding tables (int8 by the kernel, whoever
quantized the linears); a bundle without it kept them in float."""


def adapter_file(name: str) -> str:
    return f"adapters/{name}.safetensors"


def assets_file(name: str) -> str:
    return f"assets/{name}.safetensors"


def drop_training_state(student: NexusStudent) -> None:
    """Remove what only training needs: the anchor projections (the optimizer state and the
    PCA bases live in the run's checkpoints, never in the student)."""
    for adapter in student.adapters.values():
        adapter.anchors = nn.ModuleDict()  # type: ignore[union-attr]


def _tensor_bytes(state: Mapping[str, Any]) -> bytes:
    from nexus_kernel.student.weights import tensor_bytes

    return tensor_bytes({key: value for key, value in state.items() if isinstance(value, torch.Tensor)})


def folder_bytes(save_to: Any) -> dict[str, bytes]:
    """The files `save_to(folder)` writes (a `save_pretrained`), by name, read from a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        save_to(scratch)
        return {path.name: path.read_bytes() for path in sorted(Path(scratch).iterdir()) if path.is_file()}


def fp32_bytes(student: NexusStudent) -> int:
    """Size of the student's inference weights as float32 safetensors (the reference the
    bundle's size is compared with)."""
    total = len(_tensor_bytes(student.backbone.state_dict()))
    for adapter in student.adapters.values():
        total += len(_tensor_bytes(adapter.state_dict()))
    return total


def quantize_student(student: NexusStudent, plugins: PluginSet | None, scheme: str,
                     quantizers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Quantize the backbone (its linears by the `scheme`'s quantizer, its embedding tables to
    int8 by the kernel) and every adapter (by the kernel) in place; returns module to
    quantizer. With `quantizers` (from a manifest) each module goes to the quantizer that made
    it.

    Adapters go to the kernel's weight-only layers, which dequantize into float and call
    `F.linear`: a LoRA adapter (PEFT's) is float layers, so these export to PEFT without loss
    (`hf_export`) and answer there exactly as here. bitsandbytes' CPU int8 layer also quantizes
    its input (cast to float16, then int8 per row): measured on a 64 x 32 layer, 0.0077 max
    abs from `F.linear` on the same int8 weights, so an exported float adapter would answer
    differently. (Bundles written before this keep what their manifest records.)"""
    used = {}
    training = student.training
    backbone, used["backbone"] = quantize_module(plugins, student.backbone, scheme,
                                                 (quantizers or {}).get("backbone"))
    if (quantizers is None or EMBEDDINGS in quantizers) and quantize_embeddings(backbone):
        used[EMBEDDINGS] = KERNEL
    student.backbone = backbone
    student.reattach_deltas()
    for name in list(student.adapters):
        key = f"adapters.{name}"
        made_by = KERNEL if quantizers is None else quantizers.get(key)
        module, used[key] = quantize_module(plugins, student.adapters[name], scheme, made_by)
        student.adapters[name] = module
    student.train(training)  # new layers start in training mode, and bitsandbytes' differ there
    return used


def export_files(student: NexusStudent, assets: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, bytes]:
    """The bundle's files for a packaged (quantized, training state dropped) student."""
    files = {f"{BACKBONE_DIR}/{name}": data for name, data in folder_bytes(student.backbone.config.save_pretrained).items()}
    files |= {f"{TOKENIZER_DIR}/{name}": data for name, data in folder_bytes(student.tokenizer.save_pretrained).items()}
    files[WEIGHTS["backbone"]] = _tensor_bytes(student.backbone.state_dict())
    for name, adapter in student.adapters.items():
        files[adapter_file(name)] = _tensor_bytes(adapter.state_dict())
    for name, tensors in assets.items():
        if tensors:
            files[assets_file(name)] = _tensor_bytes(tensors)
    return files


def student_section(student: NexusStudent, scheme: str, quantizers: Mapping[str, str]) -> dict[str, Any]:
    """The manifest's `student` section: how `load_bundle` rebuilds the modules."""
    return {"scheme": scheme, "quantizers": dict(quantizers),
            "backbone_class": type(student.backbone).__name__,
            "adapters": {name: adapter.spec.to_json() for name, adapter in student.adapters.items()}}


def _count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


_SPEC_SHAPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "capability": ("a string", lambda v: isinstance(v, str)),
    "rank": ("an integer >= 1", lambda v: _count(v, 1)),
    "hidden_size": ("an integer >= 1", lambda v: _count(v, 1)),
    "targets": ("an object of layer name to [in_features, out_features]",
                lambda v: isinstance(v, dict) and all(isinstance(shape, list) and len(shape) == 2
                                                      and all(_count(n, 1) for n in shape) for shape in v.values())),
    "anchored_layers": ("a list of integers >= 0", lambda v: isinstance(v, list) and all(_count(i, 0) for i in v)),
    "input_projector": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "output": ("a string", lambda v: isinstance(v, str)),
    "output_dim": ("an integer >= 1 or null", lambda v: v is None or _count(v, 1)),
}
"""Each `AdapterSpec.to_json` key: what it must be, and the test (one entry per field)."""
_SPEC_REQUIRED = ("capability", "rank", "hidden_size", "targets", "anchored_layers")


def _mapping_of_strings(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def check_package_schema(path: Path, manifest: Mapping[str, Any]) -> None:
    """Raise `BundleError` naming `path` and the key unless the keys `load_bundle` and `Bundle`
    read have their shape: `capabilities` an object of capability to object (its `plugin`, if
    given, a string), and `student` an object with `scheme` a string, `quantizers` an object of
    module to quantizer name and `adapters` an object of capability to `AdapterSpec.to_json`;
    the backbone's and each adapter's weights listed in `files` (so checked, and inside the
    bundle). `check_manifest_schema` (bundle.py) has checked the bundle-level keys before."""
    capabilities = manifest.get("capabilities")
    if not isinstance(capabilities, dict):
        raise BundleError(f"{path}: 'capabilities' must be an object of capability name to object, "
                          f"got {type(capabilities).__name__}")
    for name, item in capabilities.items():
        if not isinstance(item, dict) or not isinstance(item.get("plugin", ""), str):
            raise BundleError(f"{path}: capabilities[{name!r}] must be an object whose 'plugin' is a string, "
                              f"got {type(item).__name__} {item!r}")
    section = manifest.get("student")
    if not isinstance(section, dict):
        raise BundleError(f"{path}: no 'student' section to rebuild the student from")
    if not isinstance(section.get("scheme"), str):
        raise BundleError(f"{path}: student['scheme'] must be a string, got {section.get('scheme')!r}")
    if not _mapping_of_strings(section.get("quantizers")):
        raise BundleError(f"{path}: student['quantizers'] must be an object of module to quantizer name, "
                          f"got {section.get('quantizers')!r}")
    adapters = section.get("adapters")
    if not isinstance(adapters, dict):
        raise BundleError(f"{path}: student['adapters'] must be an object of capability name to adapter spec, "
                          f"got {type(adapters).__name__}")
    for name, spec in adapters.items():
        where = f"{path}: student['adapters'][{name!r}]"
        if not isinstance(spec, dict):
            raise BundleError(f"{where} must be an object (an adapter spec), got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_SPEC_SHAPES))
        missing = [key for key in _SPEC_REQUIRED if key not in spec]
        if unknown or missing:
            raise BundleError(f"{where} is not an adapter spec (unknown keys: {', '.join(unknown) or 'none'}; "
                              f"missing: {', '.join(missing) or 'none'})")
        for key, value in spec.items():
            wanted, test = _SPEC_SHAPES[key]
            if not test(value):
                raise BundleError(f"{where}[{key!r}] must be {wanted}, got {value!r}")
    for weights in [WEIGHTS["backbone"], *map(adapter_file, adapters)]:
        if weights not in manifest["files"]:
            raise BundleError(f"{path}: 'files' does not list {weights!r}, which 'student' needs")


@dataclass
class Bundle:
    """A loaded bundle: the packaged student, its manifest and each capability's assets."""

    folder: Path
    manifest: dict[str, Any]
    student: NexusStudent
    plugins: PluginSet
    assets: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def capabilities(self) -> list[str]:
        return sorted(self.manifest["capabilities"])

    def model(self, capability: str) -> StudentCapability:
        self._check(capability)
        return StudentCapability(self.student, capability)

    def answer(self, capability: str, inputs: list[str]) -> str:
        """The owner plugin's answer to one query (`nexus infer`)."""
        self._check(capability)
        owned = self.plugins.capabilities()
        output = self.student.adapters[capability].spec.output  # the variant's, as the run bound it
        reply = self.plugins.call_for(capability, "answer", capability=replace(owned[capability][0], output=output),
                                      model=self.model(capability), inputs=list(inputs),
                                      assets=self.assets.get(capability, {}))
        if reply is None:
            raise BundleError(f"{self.folder}: plugin {owned[capability][1].distribution} gives no answer "
                              f"for {capability!r} (it does not implement the answer hook)")
        return str(reply)

    def _check(self, capability: str) -> None:
        if capability not in self.manifest["capabilities"]:
            raise BundleError(f"{self.folder}: no capability {capability!r} in this bundle "
                              f"(has: {', '.join(self.capabilities)})")


def load_bundle(path: str | Path, plugins: PluginSet | None = None) -> Bundle:
    """Verify the bundle at `path` (checksums, paths, required plugins) and rebuild its student.

    `plugins` defaults to every installed plugin; each packaged capability's owner must be
    among them. Raises `BundleError` naming the bundle and what is wrong.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from nexus_kernel.plugins import load_plugins
    from nexus_kernel.student.weights import read_tensors

    folder = Path(path)
    manifest = verify_bundle(folder)
    check_package_schema(folder / MANIFEST, manifest)
    plugin_set = plugins if plugins is not None else load_plugins(None)
    owned = plugin_set.capabilities()
    section = manifest["student"]
    missing = [name for name in section["adapters"] if name not in owned]
    if missing:
        plugins_needed = {name: manifest["capabilities"].get(name, {}).get("plugin", "?") for name in missing}
        raise BundleError(f"{folder}: no loaded plugin provides {', '.join(f'{n} ({d})' for n, d in plugins_needed.items())}; "
                          "pip install it first")
    config = AutoConfig.from_pretrained(folder / BACKBONE_DIR)
    backbone = AutoModelForCausalLM.from_config(config)
    student = NexusStudent(backbone, AutoTokenizer.from_pretrained(folder / TOKENIZER_DIR))
    for name in sorted(section["adapters"]):
        spec = AdapterSpec.from_json(section["adapters"][name])
        student.add_adapter(name, adapter_for(plugin_set, name, spec))
    drop_training_state(student)
    quantize_student(student, plugin_set, section["scheme"], section["quantizers"])
    try:
        student.backbone.load_state_dict(read_tensors(folder / WEIGHTS["backbone"]))
        for name, adapter in student.adapters.items():
            adapter.load_state_dict(load_file(folder / adapter_file(name)))
    except RuntimeError as exc:
        raise BundleError(f"{folder}: the weights do not fit the student the manifest describes ({exc})") from None
    assets = {name: load_file(folder / assets_file(name)) for name in section["adapters"]
              if (folder / assets_file(name)).is_file()}
    student.eval()
    return Bundle(folder, manifest, student, plugin_set, assets)
