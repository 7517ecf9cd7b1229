"""The whole `DistillPlan` of a text capability: the teacher answers each item's prompt, the
student learns the teacher's completion (its next-token distribution where the vocabularies
allow, its sorted next-token probabilities where they differ)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from nexus_kernel.contracts import TOP_K, DistillPlan
from nexus_kernel.student.decoding import IGNORE_INDEX, completion_batch
from nexus_modalities.text_model import text_model_of

if TYPE_CHECKING:
    import torch

DIFFERING_TOKENIZERS = "sequence"
"""The "auto" objective where the tokenizers differ. `benchmarks/cross_tokenizer.py` (the demo
reasoning teacher into a 6-block SmolLM2 student, 50 adapter steps each) measured `uld` no better
than cross-entropy alone (retention 0.375 [0.263, 0.475] vs 0.438 [0.325, 0.550], n = 80, both
at chance 0.400) and 13 % slower per step: a teacher as sure of its answers as that one
(top-1 probability 0.999) gives the sorted distance nothing but "be confident". `text_loss =
"uld"` asks for it."""

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


def tokenizer_kind(tokenizer: Any) -> str:
    """The model of a tokenizer's fast backend (`BPE`, `WordPiece`, `Unigram`, `WordLevel`), or
    its class name when it has none."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(backend.model).__name__ if backend is not None else type(tokenizer).__name__


def objective_reason(objective: str, teacher: Any, student: Any, asked: str = "auto") -> str:
    """Why a text capability distils with `objective` (`asked` is what the plan was asked for:
    "auto", or a `text_loss` override), in words for `distill_report.json`: e.g. "uld:
    text_loss = 'uld' (teacher WordPiece vocabulary 371 vs student BPE 49,152; 246 teacher
    tokens are not student tokens)"."""
    student_vocabulary = student.get_vocab()
    pieces = teacher.convert_ids_to_tokens(list(range(len(teacher))))
    missing = sum(piece not in student_vocabulary for piece in pieces)
    sizes = (f"teacher {tokenizer_kind(teacher)} vocabulary {len(teacher):,} vs student "
             f"{tokenizer_kind(student)} {len(student):,}")
    if objective == "kl":
        return f"kl: every teacher token is a student token ({sizes})"
    why = "teacher and student tokenizers differ" if asked == "auto" else f"text_loss = {asked!r}"
    if asked == "auto" and objective == "sequence":
        why += ": cross-entropy on the teacher's text (text_loss = 'uld' adds ULD)"
    detail = f"{sizes}; {missing:,} teacher tokens are not student tokens" if missing else sizes
    return f"{objective}: {why} ({detail})"


def text_distill_plan(teacher: Any, student: Any, items: Callable[[], Iterator[Any]],
                      to_pair: Callable[[Any], tuple[str, str]], answer: TeacherAnswers | None = None,
                      objective: str = "auto", *, answer_items: ItemAnswers | None = None,
                      whole_text: bool = False) -> Any:
    """A `DistillPlan` for a text teacher: the teacher `answer`s each item's prompt and the
    student learns `(prompt, teacher's completion)`; give `answer_items` instead of `answer`
    when the teacher's answer depends on more of the item than its prompt. With `objective`
    "auto": when every teacher token is a student token (`vocabulary_map`) the objective is
    `kl` on the teacher's top-`TOP_K` next-token distribution over the completion, for each
    item whose two tokenizations agree token for token (the others get cross-entropy); else
    `DIFFERING_TOKENIZERS` (`sequence`: cross-entropy on the completion in the student's
    tokenizer). "uld" (that cross-entropy plus the distance between sorted top-`TOP_K`
    probabilities, position by position: `nexus_kernel.algorithms.uld`) or "sequence" ask for
    that one; "kl" where the vocabularies
    differ is a `ValueError`. The plan's `for_objective` gives the others. The anchor
    activations are the teacher's on that same text. `teacher` may be None when only items
    and student batches are asked for (the objective is then `sequence`, with no reason).

    `whole_text` moves the loss (kl, uld or cross-entropy alike) from the completion to every
    token after the start tokens, prompt included: a student cut from the teacher then learns
    the teacher's distribution over the whole text, not only over the answer's one or two
    tokens. Measured on SmolLM2-135M-Instruct's knowledge cut to 26 blocks, 200 adapter steps:
    held-out accuracy 0.676 with `whole_text`, 0.651 without (teacher 0.790, the untrained cut
    0.626)."""
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
        return completion_batch(teacher_model.tokenizer, list(zip(prompts(chunk), outputs, strict=True)), whole_text)

    def teacher_forward(model: Any, batch: Any) -> Any:
        return model(input_ids=batch[0], attention_mask=batch[1])

    def student_batch(chunk: list[Any], outputs: list[str]) -> StudentBatch:
        input_ids, mask, labels = completion_batch(student.tokenizer, list(zip(prompts(chunk), outputs, strict=True)),
                                                   whole_text)
        return StudentBatch(input_ids=input_ids, attention_mask=mask, labels=labels)

    id_map = vocabulary_map(teacher_model.tokenizer, student.tokenizer) if teacher_model is not None else None

    def teacher_top(chunk: list[Any], outputs: list[str]) -> tuple[Any, Any, Any, Any]:
        """The teacher batch and, at each position, its top-`TOP_K` next tokens; which
        positions predict a completion token."""
        import torch

        assert teacher_model is not None, "the teacher is not loaded"
        input_ids, mask, labels = teacher_batch(chunk, outputs)
        with torch.inference_mode():
            logprobs = torch.log_softmax(teacher_model.model(input_ids=input_ids, attention_mask=mask).logits.float(), -1)
        top = logprobs[:, :-1].topk(min(TOP_K, logprobs.shape[-1]), dim=-1)
        return input_ids, mask, top, labels[:, 1:] != IGNORE_INDEX

    def kl_distributions(chunk: list[Any], outputs: list[str]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        import torch

        assert id_map is not None, "the vocabularies differ: no kl"
        input_ids, mask, top, wanted = teacher_top(chunk, outputs)
        student_ids = student_batch(chunk, outputs)
        rows: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for row in range(len(chunk)):
            own = student_ids.input_ids[row][student_ids.attention_mask[row].bool()]
            theirs = id_map[input_ids[row][mask[row].bool()]]
            agree = len(own) == len(theirs) and bool(torch.equal(own, theirs))
            rows.append((id_map[top.indices[row][wanted[row]]], top.values[row][wanted[row]]) if agree else None)
        return rows

    def uld_distributions(chunk: list[Any], outputs: list[str]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        _, _, top, wanted = teacher_top(chunk, outputs)
        return [(top.indices[row][wanted[row]], top.values[row][wanted[row]]) for row in range(len(chunk))]

    def plan_for(asked: str) -> DistillPlan | None:
        if teacher_model is None:
            return DistillPlan(items=items, teacher_batch=teacher_batch, teacher_forward=teacher_forward,
                               teacher_outputs=teacher_outputs, student_batch=student_batch, objective="sequence",
                               mask_of=lambda batch: batch[1])
        chosen = asked if asked != "auto" else ("kl" if id_map is not None else DIFFERING_TOKENIZERS)
        if chosen == "kl" and id_map is None:
            return None
        distributions = {"kl": kl_distributions, "uld": uld_distributions}.get(chosen)
        return DistillPlan(items=items, teacher_batch=teacher_batch, teacher_forward=teacher_forward,
                           teacher_outputs=teacher_outputs, student_batch=student_batch, objective=chosen,
                           mask_of=lambda batch: batch[1], teacher_distributions=distributions,
                           reason=objective_reason(chosen, teacher_model.tokenizer, student.tokenizer, asked),
                           for_objective=plan_for)

    plan = plan_for(objective)
    if plan is None:
        raise ValueError(f"objective {objective!r} needs every teacher token to be a student token")
    return plan
