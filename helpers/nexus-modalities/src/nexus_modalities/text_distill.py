"""The whole `DistillPlan` of a text capability: the teacher answers each item's prompt, the
student learns the teacher's completion (its next-token distribution where the vocabularies
allow)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from nexus_kernel.contracts import TOP_K, DistillPlan
from nexus_kernel.student.decoding import IGNORE_INDEX, completion_batch
from nexus_modalities.text_model import text_model_of

if TYPE_CHECKING:
    import torch

TeacherAnswers = Callable[[Any, list[str]], list[str]]
"""`(text model, prompts) -> completions`: how a text teacher answers (greedy generation, or
the best of a few log-likelihood choices)."""

ItemAnswers = Callable[[Any, list[Any]], list[str]]
"""`(text model, items) -> completions`: how a text teacher answers when it needs the items
themselves, not only their prompts (each question's own options, say)."""


def vocabulary_map(teacher: Any, student: Any) -> torch.Tensor | None:
    """Teacher token id -> student token id by piece, when every teacher piece is a student
    piece (the same vocabulary, or the student's a superset, as the demo student's is); else
    None. Teacher logits then translate into the student's vocabulary."""
    import torch

    pieces = teacher.convert_ids_to_tokens(list(range(len(teacher))))
    student_vocabulary = student.get_vocab()
    mapped = [student_vocabulary.get(piece) for piece in pieces]
    if any(index is None for index in mapped):
        return None
    return torch.tensor(mapped, dtype=torch.long)


def text_distill_plan(teacher: Any, student: Any, items: Callable[[], Iterator[Any]],
                      to_pair: Callable[[Any], tuple[str, str]], answer: TeacherAnswers | None = None, *,
                      answer_items: ItemAnswers | None = None) -> Any:
    """A `DistillPlan` for a text teacher: the teacher `answer`s each item's prompt and the
    student learns `(prompt, teacher's completion)`; give `answer_items` instead of `answer`
    when the teacher's answer depends on more of the item than its prompt. When every teacher
    token is a student token (`vocabulary_map`) the objective is `kl` on the teacher's top-`TOP_K` next-token
    distribution over the completion, for each item whose two tokenizations agree token for
    token (the others get cross-entropy); else `sequence` (cross-entropy on the completion
    with the student's own tokenizer). The anchor activations are the teacher's on that same
    text. `teacher` may be None when only items and student batches are asked for."""
    from nexus_kernel.student.model import StudentBatch

    teacher_model = text_model_of(teacher) if teacher is not None else None

    def prompts(chunk: list[Any]) -> list[str]:
        return [to_pair(item)[0] for item in chunk]

    def teacher_outputs(chunk: list[Any]) -> list[str]:
        assert teacher_model is not None, "the teacher is not loaded"
        if answer_items is not None:
            return answer_items(teacher_model, chunk)
        assert answer is not None, "text_distill_plan needs `answer` or `answer_items`"
        return answer(teacher_model, prompts(chunk))

    def teacher_batch(chunk: list[Any], outputs: list[str]) -> Any:
        assert teacher_model is not None, "the teacher is not loaded"
        return completion_batch(teacher_model.tokenizer, list(zip(prompts(chunk), outputs, strict=True)))

    def teacher_forward(model: Any, batch: Any) -> Any:
        return model(input_ids=batch[0], attention_mask=batch[1])

    def student_batch(chunk: list[Any], outputs: list[str]) -> StudentBatch:
        input_ids, mask, labels = completion_batch(student.tokenizer, list(zip(prompts(chunk), outputs, strict=True)))
        return StudentBatch(input_ids=input_ids, attention_mask=mask, labels=labels)

    id_map = vocabulary_map(teacher_model.tokenizer, student.tokenizer) if teacher_model is not None else None

    def teacher_distributions(chunk: list[Any], outputs: list[str]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        import torch

        assert teacher_model is not None and id_map is not None, "the teacher is not loaded"
        input_ids, mask, labels = teacher_batch(chunk, outputs)
        student_ids = student_batch(chunk, outputs)
        with torch.inference_mode():
            logprobs = torch.log_softmax(teacher_model.model(input_ids=input_ids, attention_mask=mask).logits.float(), -1)
        top = logprobs[:, :-1].topk(TOP_K, dim=-1)
        wanted = labels[:, 1:] != IGNORE_INDEX
        rows: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for row in range(len(chunk)):
            own = student_ids.input_ids[row][student_ids.attention_mask[row].bool()]
            theirs = id_map[input_ids[row][mask[row].bool()]]
            agree = len(own) == len(theirs) and bool(torch.equal(own, theirs))
            rows.append((id_map[top.indices[row][wanted[row]]], top.values[row][wanted[row]]) if agree else None)
        return rows

    return DistillPlan(items=items, teacher_batch=teacher_batch, teacher_forward=teacher_forward,
                       teacher_outputs=teacher_outputs, student_batch=student_batch,
                       objective="kl" if id_map is not None else "sequence", mask_of=lambda batch: batch[1],
                       teacher_distributions=teacher_distributions if id_map is not None else None)
