"""`CausalTextModel` answers as the kernel's decoding of its model does, and `text_model_of`
picks the wrapper that fits what a benchmark is handed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.kit.testing import tiny_causal_teacher
from nexus_kernel.student.decoding import (
    continuation_logprobs,
    greedy_decode,
    left_padded,
    recomputing,
)
from nexus_kernel.student.model import (
    CapabilityAdapter,
    NexusStudent,
    StudentCapability,
    StudentTextModel,
)
from nexus_kernel.teachers.loading import load_teacher_folder
from nexus_modalities.text_model import CausalTextModel, text_model_of

PROMPTS = ["apple pear", "pear", "apple apple pear apple 7 + 3 =", "x"]


def _teacher(tmp_path: Path) -> CausalTextModel:
    return CausalTextModel.from_folder(tiny_causal_teacher(tmp_path / "teacher", ["apple", "pear"]))


def _logits(model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def logits(input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
    return logits


def test_generate_is_greedy_decoding_of_the_model_in_batches(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path)
    rows = greedy_decode(recomputing(_logits(teacher.model)), *left_padded(teacher.tokenizer, PROMPTS), 6)
    expected = [teacher.tokenizer.decode(row) for row in rows]
    assert any(expected)  # it decoded something
    assert teacher.generate(PROMPTS, 6) == expected
    teacher.batch_size = 3  # two batches: 3 prompts, then 1
    assert teacher.generate(PROMPTS, 6) == expected


def test_loglikelihoods_are_the_continuations_log_probabilities(tmp_path: Path) -> None:
    teacher = _teacher(tmp_path)
    requests = [("apple", " pear"), ("pear", " apple apple"), ("x", " 7")]
    expected = continuation_logprobs(_logits(teacher.model), teacher.tokenizer, requests)
    assert all(value < 0 for value in expected)
    assert teacher.loglikelihoods(requests) == expected


def test_text_model_of_wraps_a_student_capability_and_a_loaded_teacher(tmp_path: Path) -> None:
    folder = tiny_causal_teacher(tmp_path / "teacher", ["apple", "pear"])
    loaded = load_teacher_folder("tiny", folder, "fp32")
    teacher = text_model_of(loaded)
    assert isinstance(teacher, CausalTextModel) and teacher.model is loaded.model
    assert teacher.tokenizer.get_vocab() == CausalTextModel.from_folder(folder).tokenizer.get_vocab()

    student = NexusStudent(loaded.model, teacher.tokenizer)
    student.add_adapter("words", CapabilityAdapter(AdapterSpec("words", 2, 32, {})))
    wrapped = text_model_of(StudentCapability(student, "words"))
    assert isinstance(wrapped, StudentTextModel)
    assert wrapped.student is student and wrapped.capability == "words"


def test_the_choice_loss_is_the_cross_entropy_of_the_scorers_option_likelihoods(tmp_path: Path) -> None:
    from nexus_modalities.text_teacher import choice_batch, choice_loss

    teacher = _teacher(tmp_path)
    questions = [("apple pear", [" apple", " pear", " pear apple", " 7"], 1),
                 ("pear", [" 7", " apple apple", " pear", " x"], 3)]
    likelihoods = torch.tensor(teacher.loglikelihoods(
        [(prompt, option) for prompt, options, _ in questions for option in options])).view(2, 4)
    expected = torch.nn.functional.cross_entropy(likelihoods, torch.tensor([1, 3]))
    with torch.inference_mode():
        loss = choice_loss(teacher.model, choice_batch(teacher.tokenizer, questions))
    assert abs(float(loss) - float(expected)) < 1e-4, (float(loss), float(expected))
    # The gold index matters: another answer key gives another loss.
    with torch.inference_mode():
        other = choice_loss(teacher.model, choice_batch(teacher.tokenizer, [(p, o, 0) for p, o, _ in questions]))
    assert abs(float(other) - float(expected)) > 1e-3


def test_a_choice_batch_needs_as_many_options_per_question(tmp_path: Path) -> None:
    import pytest
    from nexus_modalities.text_teacher import choice_batch

    with pytest.raises(ValueError, match=r"same number of options, got \[2, 3\]"):
        choice_batch(_teacher(tmp_path).tokenizer, [("pear", [" a", " b"], 0), ("pear", [" a", " b", " c"], 0)])
