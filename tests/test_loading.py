"""Teacher loading: every quantization option on CPU, and clear errors for bad folders."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from nexus_kernel.teachers.loading import (
    QUANTIZATION_ORDER,
    TeacherLoadError,
    check_weight_file,
    load_teacher_folder,
)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("teachers") / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=32)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("scheme", QUANTIZATION_ORDER)
def test_every_option_loads_and_runs_close_to_fp32(tiny_teacher: Path, scheme: str) -> None:
    ids = torch.arange(16)[None] % 64
    reference = load_teacher_folder("tiny", tiny_teacher, "fp32").model(input_ids=ids).logits
    loaded = load_teacher_folder("tiny", tiny_teacher, scheme)
    assert loaded.quantization == scheme and loaded.skipped == {}
    logits = loaded.model(input_ids=ids).logits.float()
    relative = (logits - reference).norm() / reference.norm()
    assert relative < (0.02 if scheme == "fp32" else 0.5), relative
    assert loaded.describe()["quantization"] == scheme


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(TeacherLoadError, match=r"teacher 'gone': folder .*gone does not exist"):
        load_teacher_folder("gone", tmp_path / "gone")


def test_corrupt_weights_are_named(tiny_teacher: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_teacher / "config.json").read_text())
    (broken / "model.safetensors").write_bytes((tiny_teacher / "model.safetensors").read_bytes()[:200])
    with pytest.raises(TeacherLoadError, match=r"teacher 'broken': .*model.safetensors is not a readable safetensors file"):
        load_teacher_folder("broken", broken)


def _overwrite_tensors(file: Path, names: list[str], value: float) -> None:
    """Write `value` (as float32) over the first elements of each named tensor, header kept."""
    raw = bytearray(file.read_bytes())
    header_size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_size])
    for name in names:
        assert header[name]["dtype"] == "F32"
        start = 8 + header_size + header[name]["data_offsets"][0]
        raw[start:start + 16] = struct.pack("<f", value) * 4
    file.write_bytes(bytes(raw))


def _copy_teacher(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_non_finite_weights_are_named(tiny_teacher: Path, tmp_path: Path) -> None:
    broken = _copy_teacher(tiny_teacher, tmp_path / "nan")
    _overwrite_tensors(broken / "model.safetensors",
                       ["model.norm.weight", "model.layers.1.mlp.down_proj.weight"], float("nan"))
    with pytest.raises(TeacherLoadError) as caught:
        load_teacher_folder("nan", broken, "fp32")
    assert str(caught.value) == (
        f"teacher 'nan': {broken / 'model.safetensors'} holds non-finite values (NaN or Inf) in 2 tensors: "
        "model.layers.1.mlp.down_proj.weight, model.norm.weight; the file is corrupt or the model diverged")


def test_more_than_five_non_finite_tensors_are_counted(tiny_teacher: Path, tmp_path: Path) -> None:
    broken = _copy_teacher(tiny_teacher, tmp_path / "inf")
    names = [f"model.layers.{layer}.{part}" for layer in (0, 1)
             for part in ("input_layernorm.weight", "mlp.up_proj.weight", "self_attn.q_proj.weight")]
    _overwrite_tensors(broken / "model.safetensors", names, float("-inf"))
    with pytest.raises(TeacherLoadError) as caught:
        load_teacher_folder("inf", broken, "fp32")
    assert str(caught.value) == (
        f"teacher 'inf': {broken / 'model.safetensors'} holds non-finite values (NaN or Inf) in 6 tensors: "
        + ", ".join(sorted(names)[:5]) + " and 1 more; the file is corrupt or the model diverged")


def test_half_precision_infinity_is_found_and_integers_are_ignored(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    file = tmp_path / "model.safetensors"
    half = torch.zeros(8, dtype=torch.float16)
    half[3] = float("inf")
    save_file({"ok": torch.ones(4, dtype=torch.bfloat16), "ids": torch.arange(4), "scale": half}, str(file))
    with pytest.raises(TeacherLoadError) as caught:
        check_weight_file("half", file)
    assert str(caught.value) == (f"teacher 'half': {file} holds non-finite values (NaN or Inf) in 1 tensor: "
                                 "scale; the file is corrupt or the model diverged")
    save_file({"ok": torch.ones(4, dtype=torch.bfloat16), "ids": torch.arange(4)}, str(file))
    check_weight_file("half", file)


def test_unknown_architecture_is_named(tiny_teacher: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((tiny_teacher / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["AcmeBrainModel"]}))
    with pytest.raises(TeacherLoadError, match=r"teacher 'odd': .*names architectures \['AcmeBrainModel'\]"):
        load_teacher_folder("odd", odd)
    (odd / "config.json").write_text("{not json")
    with pytest.raises(TeacherLoadError, match=r"config.json is not valid JSON"):
        load_teacher_folder("odd", odd)


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init BERT saved as `BertModel` and as `BertForMaskedLM`."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    root = tmp_path_factory.mktemp("encoders")
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    for model_class in (BertModel, BertForMaskedLM):
        torch.manual_seed(0)
        model_class(config).save_pretrained(root / model_class.__name__)
    return root


@pytest.mark.parametrize("saved_as", ["BertModel", "BertForMaskedLM"])
@pytest.mark.parametrize("scheme", ["dynamic-int8", "fp32"])
def test_a_bert_encoder_loads_as_the_class_it_was_saved_as(tiny_encoders: Path, saved_as: str, scheme: str) -> None:
    loaded = load_teacher_folder("encoder", tiny_encoders / saved_as, scheme)
    assert type(loaded.model).__name__ == saved_as and loaded.quantization == scheme
    assert "note" not in loaded.describe()
    ids = torch.arange(1, 9)[None]
    hidden = loaded.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert hidden.shape == (1, 8, 32) and torch.isfinite(hidden).all()


@pytest.mark.parametrize("architectures", [None, [], ["AcmeSentenceEncoder"]])
def test_an_encoder_whose_class_transformers_lacks_loads_as_its_base_model(
    tiny_encoders: Path, tmp_path: Path, architectures: list[str] | None
) -> None:
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(tiny_encoders / "BertModel", folder)
    config = json.loads((folder / "config.json").read_text())
    if architectures is None:
        del config["architectures"]
    else:
        config["architectures"] = architectures
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_teacher_folder("export", folder, "fp32")
    reference = load_teacher_folder("saved", tiny_encoders / "BertModel", "fp32")
    assert type(loaded.model).__name__ == "BertModel"
    assert "loaded the bert encoder's base model (BertModel) with AutoModel" in loaded.describe()["note"]
    ids = torch.arange(1, 9)[None]
    assert torch.equal(loaded.model(input_ids=ids).last_hidden_state, reference.model(input_ids=ids).last_hidden_state)


def test_an_unknown_class_of_an_unknown_or_decoder_family_is_named(tiny_teacher: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((tiny_teacher / "config.json").read_text())
    # A decoder family's base model would drop its LM head: no fallback, the class is named.
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["AcmeForCausalLM"]}))
    with pytest.raises(TeacherLoadError, match=r"names architectures \['AcmeForCausalLM'\] \(model_type 'llama'\)"):
        load_teacher_folder("odd", odd)
    (odd / "config.json").write_text(json.dumps({"architectures": ["AcmeEncoder"], "model_type": "acme"}))
    with pytest.raises(TeacherLoadError, match=r"names architectures \['AcmeEncoder'\] \(model_type 'acme'\)"):
        load_teacher_folder("odd", odd)


def test_loads_keep_transformers_progress_bars_off_and_restore_them(tiny_teacher: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    load_teacher_folder("tiny", tiny_teacher, "fp32")
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert transformers_logging.is_progress_bar_enabled()  # as it was before the load
    transformers_logging.disable_progress_bar()
    load_teacher_folder("tiny", tiny_teacher, "bf16")
    assert not transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()


@pytest.mark.parametrize(("device", "parameters", "budget", "flags", "scheme", "why"), [
    ("cuda", 135_000_000, 16, [], "nf4", "cuda: bitsandbytes 4-bit kernels"),
    ("cpu", 135_000_000, 16, ["amx_bf16", "avx512_bf16"], "bf16", "native bf16 matmuls (amx_bf16, avx512_bf16)"),
    ("cpu", 135_000_000, 16, [], "fp32", "no native bf16 matmuls"),
    # 7B in 16 GB: fp32 (28 GB) and bf16 (14 GB) exceed half the budget; INT8 (7 GB) fits (dynamic
    # INT8 would load the fp32 weights first).
    ("cpu", 7_000_000_000, 16, ["amx_bf16"], "int8", "int8 is the fastest option whose weights (6.52 GB for 7,000M"),
    ("cpu", 70_000_000_000, 16, [], "nf4", "no option's weights fit 50% of the 16 GB memory budget"),
])
def test_auto_precision_is_the_fastest_that_fits(device: str, parameters: int, budget: float, flags: list[str],
                                                  scheme: str, why: str) -> None:
    from nexus_kernel.teachers.loading import choose_precision

    chosen, reason = choose_precision(device, parameters, budget, bf16_flags=flags)
    assert chosen == scheme and why in reason, reason
    if device == "cpu" and scheme != "nf4":
        assert reason.startswith("cpu: no working 4-bit kernel")


def test_native_bf16_flags_read_the_cpu_flags(tmp_path: Path) -> None:
    from nexus_kernel.teachers.loading import native_bf16_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert native_bf16_flags(cpuinfo) == ["amx_bf16", "avx512_bf16"]
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert native_bf16_flags(cpuinfo) == []
    assert native_bf16_flags(tmp_path / "absent") == []
