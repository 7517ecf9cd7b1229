"""Text helpers for text-producing demo teachers and their plugins: the demo teachers'
causal LM, its training, probe and distillation plans, and answering with it. Tokenizing and
decoding live in `nexus_kernel.student.decoding` (the student uses them too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus_kernel.student.decoding import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    PAD_ID,
    build_tokenizer,
    cached_step,
    complete,
    completion_batch,
    continuation_logprobs,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from nexus_kernel.training import TrainingRecord

SMALL_DECODER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                 "num_attention_heads": 4}
"""The LLaMA-style shape of the text demo teachers (about 0.5M parameters with their vocabulary)."""


class CausalTextModel:
    """A causal LM and its tokenizer behind the two calls text benchmarks make: greedy
    `generate` and `loglikelihoods` (lm-evaluation-harness request types)."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast,
                 batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: str | Path) -> CausalTextModel:
        """Load a `save_pretrained` folder (model and tokenizer) in float32."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy completions of `prompts`, without the prompt."""
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            answers += complete(cached_step(self.model), self.tokenizer, prompts[start : start + self.batch_size],
                                max_new_tokens)
        return answers

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        """Log-probability of each `(prompt, continuation)` pair's continuation."""
        totals: list[float] = []
        for start in range(0, len(requests), self.batch_size):
            totals += continuation_logprobs(self._logits, self.tokenizer,
                                            requests[start : start + self.batch_size])
        return totals


def train_causal_teacher(
    folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None],
    words: Iterable[str], pairs: Iterator[tuple[str, str]],
    validate: Callable[[CausalTextModel], float] | None = None,
) -> tuple[CausalTextModel, TrainingRecord]:
    """Train a LLaMA-style causal LM (shape `recipe["model"]`, plan `recipe["plan"]`) on
    `(prompt, completion)` pairs with the loss on completions only, round by round until
    `validate` reaches `recipe["validation_target"]` (see `nexus_kernel.training.fit`), save it
    and its tokenizer to `folder`, and return it ready to score with its training record."""
    import itertools

    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.training import TrainingPlan, fit

    plan = TrainingPlan(**recipe["plan"])
    tokenizer = build_tokenizer(words)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        **recipe["model"],
    ))

    def make_batch(_: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return completion_batch(tokenizer, list(itertools.islice(pairs, plan.batch_size)))

    def loss_of(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, mask, labels = batch
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    def scored(model: torch.nn.Module) -> float:
        assert validate is not None
        return validate(CausalTextModel(model, tokenizer))

    record = fit(model, plan, make_batch, loss_of, progress, validate=scored if validate else None,
                 target=recipe.get("validation_target"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return CausalTextModel(model, tokenizer), record


def causal_probe_plan(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast,
                      pairs: Callable[[], Iterator[tuple[str, str]]], n_probe: int) -> Any:
    """A `ProbePlan` for a causal LM whose task is `(prompt, completion)` pairs: `pairs()`
    starts a fresh stream; the loss is the completion loss, the mask the attention mask, the
    candidates the decoder blocks."""
    from nexus_kernel.algorithms.profiling import plan_from_items, repeated_blocks

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        input_ids, mask, labels = batch
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    return plan_from_items(pairs, lambda chunk: completion_batch(tokenizer, chunk), loss,
                           repeated_blocks(model), n_probe, mask_of=lambda batch: batch[1])


def text_probe_plan(teacher: Any, n_probe: int, source: str, split: str,
                    synthetic: Callable[[], Iterable[Any]], read_folder: Callable[[Path, str], Iterable[Any]],
                    to_pair: Callable[[Any], tuple[str, str]]) -> Any:
    """`causal_probe_plan` for a loaded text teacher (`teacher.model`, `teacher.folder`) whose
    items come from a locked `source`: the `synthetic()` stream, or `split` of a real folder."""
    from transformers import AutoTokenizer

    from nexus_kernel.kit.datasets import items_of

    def pairs() -> Iterator[tuple[str, str]]:
        return map(to_pair, items_of(source, split, lambda _: synthetic(), read_folder))

    return causal_probe_plan(teacher.model, AutoTokenizer.from_pretrained(teacher.folder), pairs, n_probe)


def text_model_of(model: Any) -> Any:
    """What text benchmarks score: a `StudentCapability` as a `StudentTextModel`, a loaded
    teacher (`.model`, `.folder`) as a `CausalTextModel` with its own tokenizer."""
    from transformers import AutoTokenizer

    from nexus_kernel.student.model import StudentCapability, StudentTextModel

    if isinstance(model, StudentCapability):
        return StudentTextModel(model.student, model.capability)
    return CausalTextModel(model.model, AutoTokenizer.from_pretrained(model.folder))


TeacherAnswers = Callable[[Any, list[str]], list[str]]
"""`(text model, prompts) -> completions`: how a text teacher answers (greedy generation, or
the best of a few log-likelihood choices)."""


TOP_K = 16
"""Teacher tokens kept per position for the `kl` objective."""


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
                      to_pair: Callable[[Any], tuple[str, str]], answer: TeacherAnswers) -> Any:
    """A `DistillPlan` for a text teacher: the teacher `answer`s each item's prompt and the
    student learns `(prompt, teacher's completion)`. When every teacher token is a student
    token (`vocabulary_map`) the objective is `kl` on the teacher's top-`TOP_K` next-token
    distribution over the completion, for each item whose two tokenizations agree token for
    token (the others get cross-entropy); else `sequence` (cross-entropy on the completion
    with the student's own tokenizer). The anchor activations are the teacher's on that same
    text. `teacher` may be None when only items and student batches are asked for."""
    from nexus_kernel.contracts import DistillPlan
    from nexus_kernel.student.model import StudentBatch

    teacher_model = text_model_of(teacher) if teacher is not None else None

    def prompts(chunk: list[Any]) -> list[str]:
        return [to_pair(item)[0] for item in chunk]

    def teacher_outputs(chunk: list[Any]) -> list[str]:
        assert teacher_model is not None, "the teacher is not loaded"
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
