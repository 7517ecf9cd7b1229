"""A student backbone cut from a teacher by stage 2's ablation ranking (`nexus_kernel.student.pruning`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nexus_kernel.errors import StageError
from nexus_kernel.student.pruning import blocks_to_keep, prune_causal_lm


def _tiny_llama(folder: Path, layers: int = 4) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model.save_pretrained(folder)
    vocab = {"<unk>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(folder)
    return model.eval()


def test_blocks_to_keep_takes_the_top_of_the_ranking_in_model_order() -> None:
    ranking = ["model.layers.3", "model.layers.0", "model.layers.2", "model.layers.1"]
    assert blocks_to_keep(ranking, 2, "t") == ("model.layers", [0, 3])
    assert blocks_to_keep(ranking, 0, "t") == ("model.layers", [0, 1, 2, 3])
    with pytest.raises(StageError, match="keep_layers = 5.*4 decoder blocks"):
        blocks_to_keep(ranking, 5, "t")
    with pytest.raises(StageError, match="numbered blocks of one decoder stack"):
        blocks_to_keep(["model.layers.0", "lm_head"], 1, "t")


def test_the_cut_is_the_teacher_without_the_dropped_blocks(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = _tiny_llama(tmp_path / "teacher")
    ranking = ["model.layers.3", "model.layers.0", "model.layers.2", "model.layers.1"]
    cut = prune_causal_lm("t", tmp_path / "teacher", ranking, 2, tmp_path / "run/student/backbone")
    assert cut.kept == (0, 3) and cut.teacher_layers == 4 and cut.stack == "model.layers"
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run/student/backbone").eval()
    assert student.config.num_hidden_layers == 2
    assert json.loads((tmp_path / "run/student/backbone/config.json").read_text())["num_hidden_layers"] == 2
    assert AutoTokenizer.from_pretrained(tmp_path / "run/student/backbone").get_vocab()["c"] == 3
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    # The same computation as the teacher with blocks 1 and 2 skipped.
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    teacher.model.layers = torch.nn.ModuleList([teacher.model.layers[0], teacher.model.layers[3]])
    with torch.no_grad():
        expected = teacher(input_ids=ids, use_cache=False).logits
        assert torch.allclose(student(input_ids=ids).logits, expected, atol=1e-5)
    assert cut.parameters == sum(p.numel() for p in student.parameters())


def test_a_second_cut_replaces_the_first(tmp_path: Path) -> None:
    _tiny_llama(tmp_path / "teacher")
    ranking = ["model.layers.1", "model.layers.2", "model.layers.0", "model.layers.3"]
    out = tmp_path / "backbone"
    prune_causal_lm("t", tmp_path / "teacher", ranking, 3, out)
    prune_causal_lm("t", tmp_path / "teacher", ranking, 1, out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "teacher"]  # no staging left behind
