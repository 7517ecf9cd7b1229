"""Greedy decoding through a key/value cache gives what rerunning the whole sequence gives."""

from __future__ import annotations

import functools

import torch

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.student.decoding import (
    build_tokenizer,
    cached_step,
    greedy_decode,
    left_padded,
    recomputing,
)
from nexus_kernel.student.model import (
    CapabilityAdapter,
    NexusStudent,
    StudentTextModel,
    default_targets,
    linear_targets,
)

PROMPTS = ["apple pear", "pear", "apple apple pear apple 7 + 3 =", "x"]  # left padding of every width


def _decoder(seed: int = 0) -> tuple[torch.nn.Module, object]:
    """An untrained two-block LLaMA-style causal LM and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(["apple", "pear"])
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64))
    return model.eval(), tokenizer


def _decode_both(recompute: object, cached: object, tokenizer: object) -> tuple[list[list[int]], list[list[int]]]:
    input_ids, mask = left_padded(tokenizer, PROMPTS)
    return (greedy_decode(recompute, input_ids, mask, 12),  # type: ignore[arg-type]
            greedy_decode(cached, input_ids, mask, 12))  # type: ignore[arg-type]


def test_a_cached_causal_lm_decodes_exactly_as_rerunning_the_sequence() -> None:
    model, tokenizer = _decoder()

    def logits(input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits

    slow, fast = _decode_both(recomputing(logits), cached_step(model), tokenizer)
    assert fast == slow
    assert sum(len(row) for row in slow) > len(PROMPTS)  # it did decode, not stop at once


def test_a_cached_student_capability_decodes_exactly_as_rerunning_the_sequence() -> None:
    backbone, tokenizer = _decoder(seed=1)
    student = NexusStudent(backbone, tokenizer)
    targets = linear_targets(backbone, default_targets(backbone))
    student.add_adapter("words", CapabilityAdapter(AdapterSpec("words", 4, 32, targets, anchored_layers=(0, 1))))
    with torch.no_grad():  # a delta that moves the answers away from the bare backbone's
        for parameter in student.adapters["words"].parameters():
            parameter.normal_(0, 0.3)
    student.eval()
    text_model = StudentTextModel(student, "words")
    slow, fast = _decode_both(recomputing(text_model._logits), functools.partial(student.text_step, "words"),
                              student.tokenizer)
    assert fast == slow
    bare = greedy_decode(cached_step(backbone), *left_padded(tokenizer, PROMPTS), 12)
    assert fast != bare  # the adapter is in the cached path


def test_sequences_use_the_tokenizer_s_own_special_ids() -> None:
    """The demo tokenizer's ids are 0, 1, 2; another tokenizer's are wherever its vocabulary
    puts them, and one without BOS starts with its EOS, one without either with nothing."""
    from types import SimpleNamespace

    import pytest

    from nexus_kernel.student.decoding import BOS_ID, EOS_ID, PAD_ID, SpecialIds, completion_batch

    demo = build_tokenizer(["apple"])
    assert SpecialIds.of(demo) == SpecialIds(BOS_ID, EOS_ID, PAD_ID)
    no_bos = SimpleNamespace(bos_token_id=None, eos_token_id=7, pad_token_id=None)
    assert SpecialIds.of(no_bos) == SpecialIds(None, 7, 7) and SpecialIds.of(no_bos).start() == [7]
    bare = SpecialIds.of(SimpleNamespace(bos_token_id=None, eos_token_id=None, pad_token_id=None))
    assert bare == SpecialIds(None, None, 0) and bare.start() == []

    moved = build_tokenizer(["apple", "pear"])
    moved.bos_token, moved.eos_token, moved.pad_token = "apple", "pear", "x"
    special = SpecialIds.of(moved)
    ids, mask = left_padded(moved, ["7", "7 + 3"])
    assert ids[0].tolist()[-2:] == [special.bos, moved.convert_tokens_to_ids("7")]
    assert ids[0][~mask[0].bool()].tolist() == [special.pad] * int((~mask[0].bool()).sum())
    input_ids, _, labels = completion_batch(moved, [("7", " 3")])
    assert input_ids[0].tolist()[0] == special.bos and labels[0].tolist()[-1] == special.eos
    moved.bos_token, moved.eos_token = None, None
    with pytest.raises(ValueError, match="an empty prompt, and the tokenizer has neither a BOS nor an EOS"):
        left_padded(moved, [""])


def test_a_whole_text_completion_batch_labels_the_prompt_too() -> None:
    from nexus_kernel.student.decoding import IGNORE_INDEX, SpecialIds, completion_batch

    tokenizer = build_tokenizer(["apple", "pear"])
    special = SpecialIds.of(tokenizer)
    pairs = [("apple pear", " pear"), ("pear", " apple apple")]
    input_ids, mask, answers = completion_batch(tokenizer, pairs)
    _, _, whole = completion_batch(tokenizer, pairs, whole_text=True)
    for row in range(len(pairs)):
        real = input_ids[row][mask[row].bool()].tolist()
        assert whole[row][mask[row].bool()].tolist() == [IGNORE_INDEX] * len(special.start()) + real[len(special.start()):]
        prompt_length = 1 + len(tokenizer(pairs[row][0], add_special_tokens=False).input_ids)
        assert answers[row][:prompt_length].tolist() == [IGNORE_INDEX] * prompt_length
        assert answers[row][prompt_length:][mask[row][prompt_length:].bool()].tolist() == real[prompt_length:]
