"""Teacher loading: every quantization option on CPU, and clear errors for bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nexus_kernel.loading import QUANTIZATION_ORDER, TeacherLoadError, load_teacher_folder


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
