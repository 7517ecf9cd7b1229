"""Every (modality, output) pair the student takes: stage 3's dummy forward pass per pair, the
public `embed` for prefix and text inputs, `embed_texts`, and the cosine loss on text input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.stages.architecture import check_forward, dummy_batch
from nexus_kernel.student.decoding import embed_texts, left_padded
from nexus_kernel.student.model import (
    AdapterError,
    CapabilityAdapter,
    NexusStudent,
    StudentBatch,
    default_targets,
    linear_targets,
)

HIDDEN = 16
TEXTS = ["apple pear", "pear", "a longer sentence about one apple"]


class FlatProjector(nn.Module):
    """Any modality's input `(batch, positions, features)` into the hidden size: one linear map
    (a real plugin's projector comes from its own package, e.g. `nexus_modalities`)."""

    def __init__(self, positions: int, features: int) -> None:
        super().__init__()
        self.input_shape = (positions, features)
        self.linear = nn.Linear(features, HIDDEN)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs)


class NoShapeProjector(nn.Module):
    """A projector that does not say what it reads."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


class WrongWidthProjector(nn.Module):
    """Declares an input shape but projects to the wrong width: the forward pass cannot run."""

    input_shape = (4, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def student_with(**adapters: tuple[str, str, nn.Module | None]) -> NexusStudent:
    """A tiny student with one adapter per keyword: `name=(output, projector name, projector)`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.student.decoding import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(["apple", "pear", "sentence"])
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=32,
                                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64))
    student = NexusStudent(backbone, tokenizer)
    targets = linear_targets(backbone, default_targets(backbone))
    for name, (output, projector_name, projector) in adapters.items():
        spec = AdapterSpec(capability=name, rank=2, hidden_size=HIDDEN, targets=targets, anchored_layers=(0, 1),
                           input_projector=projector_name, output=output,
                           output_dim=8 if output == "embedding" else None)
        student.add_adapter(name, CapabilityAdapter(spec, projector))
    return student.eval()


def every_pair() -> NexusStudent:
    return student_with(
        sentences=("embedding", None, None),
        chat=("text", None, None),
        captions=("text", "image", FlatProjector(4, 3)),
        speech=("embedding", "audio", FlatProjector(6, 5)),
    )


def test_the_dummy_batch_gives_each_pair_the_inputs_it_reads() -> None:
    student = every_pair()
    inputs = {name: (batch.prefix is not None, batch.input_ids is not None)
              for name in student.adapters
              for batch in [dummy_batch(student, student.adapters[name])]}
    # (prefix, tokens): text in gets tokens whatever its output; a projector gets a prefix,
    # and tokens too when the capability writes text.
    assert inputs == {"sentences": (False, True), "chat": (False, True),
                      "captions": (True, True), "speech": (True, False)}


def test_stage_3_checks_a_text_in_embedding_out_forward_pass() -> None:
    student = every_pair()
    shapes = check_forward(student, "sentences")
    assert shapes == {"embedding": [2, 8], "anchor": [2, 2]}
    assert check_forward(student, "speech")["embedding"] == [2, 8]
    assert check_forward(student, "captions")["logits"][0] == 2 and "embedding" not in check_forward(student, "chat")


def test_an_adapter_stage_3_cannot_run_is_an_error_naming_the_capability() -> None:
    student = student_with(odd=("embedding", "odd", NoShapeProjector()),
                           wide=("embedding", "odd", WrongWidthProjector()))
    with pytest.raises(AdapterError, match=r"^odd: its projector NoShapeProjector has no `input_shape`"):
        check_forward(student, "odd")
    with pytest.raises(AdapterError, match=r"^wide: the embedding-out adapter \(odd in\) fails a forward pass on "
                                           r"a dummy batch of prefix \(2, 4, 3\): RuntimeError"):
        check_forward(student, "wide")


def test_embed_reads_text_or_a_prefix_and_matches_the_training_forward() -> None:
    student = every_pair()
    input_ids, mask = left_padded(student.tokenizer, TEXTS)
    with torch.no_grad():
        trained = student("sentences", StudentBatch(input_ids=input_ids, attention_mask=mask)).embedding
        embedded = student.embed("sentences", input_ids=input_ids, attention_mask=mask)
        frames = torch.randn(3, 6, 5)
        spoken = student.embed("speech", frames)  # the positional prefix form callers already use
        spoken_trained = student("speech", StudentBatch(prefix=frames)).embedding
    assert embedded.shape == (3, 8) and torch.allclose(embedded, trained, atol=1e-6)
    assert torch.allclose(spoken, spoken_trained, atol=1e-6)
    # The texts differ, so do their embeddings (the text reached the head).
    assert not torch.allclose(embedded[0], embedded[1], atol=1e-4)


def test_embed_without_input_or_head_is_an_error_naming_the_capability() -> None:
    student = every_pair()
    with pytest.raises(AdapterError, match=r"capability 'sentences': the batch has neither a prefix nor input_ids"):
        student.embed("sentences")
    input_ids, mask = left_padded(student.tokenizer, TEXTS)
    with pytest.raises(AdapterError, match=r"capability 'chat' has no embedding head \(its output is 'text'\)"):
        student.embed("chat", input_ids=input_ids, attention_mask=mask)


def test_embed_texts_tokenizes_like_left_padded_and_does_not_depend_on_the_batch() -> None:
    student = every_pair()
    input_ids, mask = left_padded(student.tokenizer, TEXTS)
    with torch.no_grad():
        direct = student.embed("sentences", input_ids=input_ids, attention_mask=mask)
    together = embed_texts(student, "sentences", TEXTS)
    one_by_one = embed_texts(student, "sentences", TEXTS, batch_size=1)
    assert torch.allclose(together, direct, atol=1e-6)
    # Left padding with positions from the mask: a text's embedding is the same in any batch.
    assert torch.allclose(one_by_one, together, atol=1e-5)
    with pytest.raises(ValueError, match="sentences: no texts to embed"):
        embed_texts(student, "sentences", [])


def test_the_cosine_objective_trains_a_text_in_embedding_adapter() -> None:
    from nexus_kernel.stages.distill import CapabilityTask, gradient_health, task_loss
    from nexus_kernel.stages.distill_pool import Pool

    student = every_pair().train()
    student.freeze_backbone()
    input_ids, mask = left_padded(student.tokenizer, TEXTS)
    target = torch.randn(3, 8)
    batch = StudentBatch(input_ids=input_ids, attention_mask=mask, target=target,
                         anchor={0: torch.randn(3, 2), 1: torch.randn(3, 2)})
    pool = Pool(TEXTS, list(target), torch.zeros(3, 2, 2), torch.ones(2, 2), {}, "cosine")
    loss, parts = task_loss(student, CapabilityTask("sentences", None, None, pool, 0, 1.0), batch, alpha=1.0)
    with torch.no_grad():
        embedding = student.embed("sentences", input_ids=input_ids, attention_mask=mask)
    expected = (1 - nn.functional.cosine_similarity(embedding, target, dim=-1)).mean()
    assert parts["sentences.output"] == pytest.approx(float(expected), abs=1e-6)
    norms = gradient_health(student, {"sentences": student.adapters["sentences"]}, loss, backbone_frozen=True)
    assert norms["sentences"] > 0
