"""The student's weight files: a pretrained LM's tied embedding and LM head round-trip."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save

from nexus_kernel.student.weights import load_weights, read_tensors, save_weights, tensor_bytes


def _llama(tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, tie_word_embeddings=tied))


def test_tied_weights_are_stored_once_and_read_back_under_both_names(tmp_path: Path) -> None:
    model = _llama(tied=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    save_weights(model, tmp_path / "w.safetensors")
    tensors = read_tensors(tmp_path / "w.safetensors")
    assert set(tensors) == set(model.state_dict())
    assert torch.equal(tensors["lm_head.weight"], model.model.embed_tokens.weight)
    other = _llama(tied=True)
    torch.nn.init.zeros_(other.model.embed_tokens.weight)
    load_weights(other, tmp_path / "w.safetensors")
    assert torch.equal(other.lm_head.weight, model.lm_head.weight)
    assert other.lm_head.weight.data_ptr() == other.model.embed_tokens.weight.data_ptr()  # still tied


def test_a_state_without_shared_tensors_is_plain_safetensors() -> None:
    state = {key: value.detach().contiguous() for key, value in _llama(tied=False).state_dict().items()}
    assert tensor_bytes(state) == save(state)


def test_bytes_read_through_python_give_the_aliases_too(tmp_path: Path) -> None:
    from nexus_kernel.student.weights import tensors_from_bytes

    model = _llama(tied=True)
    save_weights(model, tmp_path / "w.safetensors")
    tensors = tensors_from_bytes((tmp_path / "w.safetensors").read_bytes())
    assert set(tensors) == set(model.state_dict())
