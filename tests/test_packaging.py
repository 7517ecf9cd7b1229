"""Quantization and the packaged student: the round trip through a bundle, its size against the
fp32 student, and every way `load_bundle` refuses a bundle."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
from kernel_helpers import require_plugins

from nexus_kernel.algorithms.quantize import (
    KERNEL,
    Int8Embedding,
    Int8Linear,
    NF4Linear,
    QuantizationError,
    kernel_quantize,
    quantize_embeddings,
)
from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.kit.testing import plugin_set_of
from nexus_kernel.plugins import PluginSet
from nexus_kernel.student.bundle import MANIFEST, BundleError, write_bundle
from nexus_kernel.student.model import (
    CapabilityAdapter,
    NexusStudent,
    default_targets,
    linear_targets,
)
from nexus_kernel.student.packaging import (
    EMBEDDINGS,
    drop_training_state,
    export_files,
    fp32_bytes,
    load_bundle,
    quantize_student,
    student_section,
)

RANKS = {"math": 21, "reasoning": 64}  # the demo's math rank, and the default max rank


def _plugins(quantizer: bool = True, reasoning: bool = True) -> PluginSet:
    """The shipped math (and reasoning) plugins, and quant-bnb: a bundle round trip runs their
    hooks for real (skipped where they are not installed)."""
    found = require_plugins("nexus_cap_math", "nexus_cap_reasoning", "nexus_quant_bnb")
    plugins = [("math", found["nexus_cap_math"].plugin)]
    if reasoning:
        plugins.append(("reasoning", found["nexus_cap_reasoning"].plugin))
    if quantizer:
        plugins.append(("quant-bnb", found["nexus_quant_bnb"]))
    return plugin_set_of(*plugins)


def default_student() -> NexusStudent:
    """The default `[student]` shape (4 x 128, the demo's vocabulary size) with two text
    adapters whose deltas are not zero."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.student.decoding import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer([f"word{i}" for i in range(300)])
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
                                            num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=512))
    student = NexusStudent(backbone, tokenizer)
    targets = linear_targets(backbone, default_targets(backbone))
    for name, rank in RANKS.items():
        spec = AdapterSpec(capability=name, rank=rank, hidden_size=128, targets=targets, anchored_layers=(1, 2))
        adapter = CapabilityAdapter(spec)
        for delta in adapter.deltas.values():
            torch.nn.init.normal_(delta.up.weight, std=0.02)
        student.add_adapter(name, adapter)
    return student.eval()


def _logits(student: NexusStudent, name: str) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    with torch.no_grad():
        return student.text_logits(name, ids, torch.ones_like(ids))


def _package(folder: Path, student: NexusStudent, plugins: PluginSet, scheme: str) -> dict[str, str]:
    drop_training_state(student)
    quantizers = quantize_student(student, plugins, scheme)
    requires = {"nexus-kernel": metadata.version("nexus-kernel")}
    write_bundle(folder, export_files(student, {}), {
        "capabilities": {name: {"plugin": f"nexus-cap-{name}"} for name in RANKS}, "requires": requires,
        "student": student_section(student, scheme, quantizers)})
    return quantizers


@pytest.mark.parametrize(("scheme", "with_bnb", "tolerance"), [
    ("int8", True, 0.05), ("nf4", True, 0.25), ("int8", False, 0.05), ("nf4", False, 0.25)])
def test_a_bundle_loads_back_to_the_same_quantized_student_at_a_third_of_fp32(
        tmp_path: Path, scheme: str, with_bnb: bool, tolerance: float) -> None:
    student = default_student()
    reference = {name: _logits(student, name) for name in RANKS}
    drop_training_state(student)
    fp32 = fp32_bytes(student)
    plugins = _plugins(quantizer=with_bnb)
    quantizers = _package(tmp_path / "bundle", student, plugins, scheme)
    assert quantizers.pop(EMBEDDINGS) == KERNEL  # the token table, whoever did the linears
    assert isinstance(student.backbone.get_input_embeddings(), Int8Embedding)
    if not with_bnb:
        assert set(quantizers.values()) == {KERNEL}
    elif scheme == "int8":
        assert quantizers.pop("backbone") == "quant-bnb"
    else:  # bitsandbytes' CPU NF4 kernel needs rows in blocks of 32: the lm_head (289 rows) is not
        assert quantizers.pop("backbone") == KERNEL
    assert set(quantizers.values()) == {KERNEL}  # adapters: weight-only, so they export to PEFT exactly
    loaded = load_bundle(tmp_path / "bundle", plugins)
    assert isinstance(loaded.student.backbone.get_input_embeddings(), Int8Embedding)
    for name in RANKS:
        quantized = _logits(student, name)
        error = float((quantized - reference[name]).norm() / reference[name].norm())
        assert 0 < error < tolerance  # quantized for real, and still close
        assert torch.equal(_logits(loaded.student, name), quantized)  # the bundle restores it exactly
    size = sum(path.stat().st_size for path in (tmp_path / "bundle").rglob("*") if path.name != MANIFEST)
    assert size / fp32 <= (0.35 if scheme == "int8" else 0.2)


def test_load_bundle_refuses_tampering_escapes_and_a_missing_plugin(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    _package(folder, default_student(), _plugins(), "int8")
    manifest = json.loads((folder / MANIFEST).read_text())

    with pytest.raises(BundleError, match="no loaded plugin provides reasoning \\(nexus-cap-reasoning\\)"):
        load_bundle(folder, _plugins(reasoning=False))

    weights = folder / "adapters/math.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit, same size
    with pytest.raises(BundleError, match="adapters/math.safetensors does not match its checksum"):
        load_bundle(folder, _plugins())
    weights.write_bytes(original)

    escaping = dict(manifest, files={**manifest["files"], "../outside.safetensors": {"bytes": 1, "sha256": "0" * 64}})
    (folder / MANIFEST).write_text(json.dumps(escaping))
    with pytest.raises(BundleError, match="escapes the bundle"):
        load_bundle(folder, _plugins())

    (folder / MANIFEST).write_text(json.dumps(dict(manifest, requires={"nexus-cap-nowhere": "1.0"})))
    with pytest.raises(BundleError, match="needs plugin distributions nexus-cap-nowhere==1.0 \\(not installed\\)"):
        load_bundle(folder, _plugins())

    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert load_bundle(folder, _plugins()).capabilities == sorted(RANKS)
    with pytest.raises(QuantizationError, match="quantized by plugin 'quant-bnb', which is not loaded"):
        load_bundle(folder, _plugins(quantizer=False))


def test_kernel_layers_store_codes_and_reconstruct_within_their_precision() -> None:
    torch.manual_seed(1)
    linear = torch.nn.Linear(100, 30)  # 3,000 weights: not a multiple of the NF4 block
    int8 = Int8Linear.from_linear(linear)
    nf4 = NF4Linear.from_linear(linear)
    assert int8.qweight.dtype == torch.int8 and nf4.packed.dtype == torch.uint8 and nf4.packed.numel() == 1500
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((int8.weight() - linear.weight).abs() <= step / 2 + 1e-7).all())
    assert float((nf4.weight() - linear.weight).detach().norm() / linear.weight.detach().norm()) < 0.12
    with pytest.raises(QuantizationError, match="unknown quantization scheme 'fp8'"):
        kernel_quantize(linear, "fp8")


def test_embedding_tables_become_int8_rows_and_a_bundle_without_their_entry_keeps_them_in_float() -> None:
    torch.manual_seed(2)
    table = torch.nn.Embedding(100, 24)
    int8 = Int8Embedding.from_embedding(table)
    ids = torch.tensor([[0, 7, 99], [7, 7, 3]])
    step = table.weight.abs().amax(dim=1, keepdim=True) / 127
    assert int8.qweight.dtype == torch.int8 and int8(ids).shape == (2, 3, 24)
    assert bool(((int8(ids) - table(ids)).abs() <= step[ids] / 2 + 1e-7).all())

    class Scaled(torch.nn.Embedding):  # a lookup with its own arithmetic (Gemma 3's scales by sqrt(d))
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * 2

    holder = torch.nn.ModuleDict({"plain": torch.nn.Embedding(10, 4), "scaled": Scaled(10, 4),
                                  "capped": torch.nn.Embedding(10, 4, max_norm=1.0)})
    assert quantize_embeddings(holder) == ["plain"]
    assert [type(holder[key]) for key in ("plain", "scaled", "capped")] == [Int8Embedding, Scaled, torch.nn.Embedding]

    old = default_student()  # a manifest written before embeddings were quantized has no entry for them
    drop_training_state(old)
    used = quantize_student(old, None, "int8", {"backbone": KERNEL} | {f"adapters.{name}": KERNEL for name in RANKS})
    assert EMBEDDINGS not in used and type(old.backbone.get_input_embeddings()) is torch.nn.Embedding
