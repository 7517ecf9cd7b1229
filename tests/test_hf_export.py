"""`nexus export --format hf`: the bundle's student as a transformers folder plus PEFT LoRA
adapters, computing what the bundle computes (bit for bit on the same CPU), and a folder that
is not an earlier export never overwritten. The demo bundle's answers through transformers +
PEFT alone, in a process that never imports Nexus, are in `test_hf_serving.py`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from kernel_helpers import REPO, nexus
from test_packaging import RANKS, _package, _plugins, default_student

from nexus_kernel.algorithms.quantize import Int8Linear, NF4Linear
from nexus_kernel.student import hf_export
from nexus_kernel.student.model import StudentTextModel
from nexus_kernel.student.packaging import load_bundle

PROMPTS = ["word1 word2", "word7", "word30 word4 word99 word5"]


def serving_recipe() -> ModuleType:
    """`examples/hf_serving.py`, the README's recipe, imported from its file."""
    spec = importlib.util.spec_from_file_location("hf_serving", REPO / "examples/hf_serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exported(tmp_path: Path, with_bnb: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, object]:
    plugins = _plugins(quantizer=with_bnb)
    quantizers = _package(tmp_path / "bundle", default_student(), plugins, "int8")
    assert quantizers["backbone"] == ("quant-bnb" if with_bnb else "nexus-kernel")
    assert {quantizers[f"adapters.{name}"] for name in RANKS} == {"nexus-kernel"}
    monkeypatch.setattr("nexus_kernel.student.packaging.load_bundle", lambda folder: load_bundle(folder, plugins))
    hf_export.export_hf(tmp_path / "bundle", tmp_path / "out")
    return tmp_path / "out", load_bundle(tmp_path / "bundle", plugins)


@pytest.mark.parametrize("with_bnb", [True, False], ids=["bitsandbytes-int8-backbone", "kernel-int8-backbone"])
def test_the_export_computes_what_the_bundle_computes(tmp_path: Path, with_bnb: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out, bundle = _exported(tmp_path, with_bnb, monkeypatch)
    files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    for name in RANKS:
        assert {f"adapters/{name}/adapter_config.json", f"adapters/{name}/adapter_model.safetensors"} <= set(files)
    assert "backbone/config.json" in files and hf_export.EXPORT_MANIFEST in files
    recipe = serving_recipe()
    model, tokenizer, parts = recipe.load(out)
    assert parts == {}  # text capabilities have nothing beside their adapter
    linear = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(linear).__name__ == ("Linear8bitLt" if with_bnb else "Linear")
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    for name in RANKS:
        model.set_adapter(name)
        with torch.inference_mode():
            theirs = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ours = bundle.student.text_logits(name, ids, torch.ones_like(ids))  # type: ignore[attr-defined]
        assert torch.equal(theirs, ours)
        text_model = StudentTextModel(bundle.student, name)  # type: ignore[attr-defined]
        nexus_answers = [text_model.generate([prompt], 12)[0] for prompt in PROMPTS]  # one at a time, as `nexus infer`
        assert [recipe.generate(model, tokenizer, name, prompt, 12) for prompt in PROMPTS] == nexus_answers
        assert any(answer.strip() for answer in nexus_answers)  # something was generated to compare


def test_kernel_layers_export_the_weights_they_multiply_with() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 40)
    for layer in (Int8Linear.from_linear(linear), NF4Linear.from_linear(linear)):
        weight = hf_export.float_linear_weight(layer)
        assert weight is not None and torch.equal(weight, layer.weight())
        inputs = torch.randn(3, 64)
        assert torch.equal(torch.nn.functional.linear(inputs, weight, layer.bias), layer(inputs))
    state = hf_export.float_state(torch.nn.Sequential(Int8Linear.from_linear(linear)))
    assert sorted(state) == ["0.bias", "0.weight"] and state["0.weight"].dtype == torch.float32
    assert hf_export.float_linear_weight(torch.nn.Conv1d(2, 2, 1)) is None


def test_an_existing_folder_that_is_not_an_export_is_never_overwritten(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out, _ = _exported(tmp_path, True, monkeypatch)
    before = (out / "backbone/model.safetensors").stat().st_mtime_ns
    hf_export.export_hf(tmp_path / "bundle", out)  # an earlier export is replaced, whole
    assert (out / "backbone/model.safetensors").stat().st_mtime_ns != before
    assert not list(tmp_path.glob(".out.*"))  # no partial or old folder left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(hf_export.ExportError, match=r"mine exists and is not an earlier export"):
        hf_export.export_hf(tmp_path / "bundle", mine)
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(hf_export.ExportError, match="outside the bundle"):
        hf_export.export_hf(tmp_path / "bundle", tmp_path / "bundle" / "hf")


def test_export_of_a_folder_that_is_not_a_bundle_is_one_clear_line(tmp_path: Path) -> None:
    result = nexus("export", str(tmp_path / "nothing"), "--format", "hf", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "nothing: no manifest.json (not a Nexus bundle)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bitsandbytes_nf4_layers_export_the_weights_they_multiply_with() -> None:
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    from nexus_quant_bnb import quantize_linears

    torch.manual_seed(0)
    layer = quantize_linears(torch.nn.Sequential(torch.nn.Linear(64, 96)), "nf4")[0]
    weight = hf_export.float_linear_weight(layer)
    inputs = torch.randn(5, 64)
    assert weight is not None and weight.shape == (96, 64)
    with torch.no_grad():
        assert torch.equal(torch.nn.functional.linear(inputs, weight, layer.bias), layer(inputs))
    # What bitsandbytes does at the first eval forward on an AVX512-bf16 CPU: codes repacked for
    # its kernel, block scales kept as bfloat16. The export reads them back, within that rounding.
    layer.weight.data, layer.weight.quant_state = bnb_functional._convert_weight_packed_for_cpu(
        layer.weight.data, layer.weight.quant_state)
    repacked = hf_export.float_linear_weight(layer)
    assert repacked is not None and repacked.shape == (96, 64)
    assert (repacked - weight).abs().max() <= weight.abs().max() * 2 ** -8
    assert (repacked - weight).abs().max() > 0  # the bfloat16 scales, not a copy of the unpacked weight
    assert layer.weight.quant_state.packing_format_for_cpu  # the layer itself is left as it was


def test_a_destination_that_cannot_be_written_is_one_clear_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(hf_export.ExportError, match=r"a-file is a file, so the export folder cannot be made"):
        hf_export.export_hf(tmp_path / "bundle", tmp_path / "a-file" / "out")
    assert (tmp_path / "a-file").read_text() == "mine"
    monkeypatch.chdir(tmp_path)  # `.` is the (non-empty) working folder: refused by its real name
    with pytest.raises(hf_export.ExportError, match=rf"{tmp_path.resolve()} exists and is not an earlier export"):
        hf_export.export_hf(tmp_path / "bundle", Path("."))
    result = nexus("export", str(tmp_path / "bundle"), "--format", "hf", str(tmp_path / "a-file" / "out"),
                   cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "is a file" in result.stderr


def test_an_old_bundle_with_bitsandbytes_int8_adapters_exports_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from nexus_kernel.student.bundle import write_bundle
    from nexus_kernel.student.packaging import drop_training_state, export_files, quantize_student, student_section

    plugins = _plugins(quantizer=True)
    student = default_student()
    drop_training_state(student)
    made_by = {"backbone": "quant-bnb"} | {f"adapters.{name}": "quant-bnb" for name in RANKS}
    quantizers = quantize_student(student, plugins, "int8", made_by)  # as packaged before the kernel took adapters
    assert {quantizers[f"adapters.{name}"] for name in RANKS} == {"quant-bnb"}
    write_bundle(tmp_path / "bundle", export_files(student, {}), {
        "capabilities": {name: {"plugin": f"nexus-cap-{name}"} for name in RANKS},
        "requires": {"nexus-kernel": metadata.version("nexus-kernel")},
        "student": student_section(student, "int8", quantizers)})
    monkeypatch.setattr("nexus_kernel.student.packaging.load_bundle", lambda folder: load_bundle(folder, plugins))
    manifest = hf_export.export_hf(tmp_path / "bundle", tmp_path / "out")
    assert [warning.split("'")[1] for warning in manifest["warnings"]] == sorted(RANKS)
    assert all("close to, not exactly as, the bundle" in warning for warning in manifest["warnings"])
