"""Causal-LM text teachers: training the demo ones, and the probe plan that profiles any of
them (a demo build or a user's Hugging Face folder)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus_kernel.student.decoding import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    PAD_ID,
    SpecialIds,
    build_tokenizer,
    completion_batch,
)
from nexus_modalities.text_model import CausalTextModel

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from nexus_modalities.training import TrainingRecord

SMALL_DECODER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                 "num_attention_heads": 4}
"""The LLaMA-style shape of the text demo teachers (about 0.5M parameters with their vocabulary)."""


def train_causal_teacher(
    folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None],
    words: Iterable[str], pairs: Iterator[tuple[str, str]],
    validate: Callable[[CausalTextModel], float] | None = None,
) -> tuple[CausalTextModel, TrainingRecord]:
    """Train a LLaMA-style causal LM (shape `recipe["model"]`, plan `recipe["plan"]`) on
    `(prompt, completion)` pairs with the loss on completions only, round by round until
    `validate` reaches `recipe["validation_target"]` (see `nexus_modalities.training.fit`), save
    it and its tokenizer to `folder`, and return it ready to score with its training record."""
    import itertools

    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_modalities.training import TrainingPlan, fit

    plan = TrainingPlan(**recipe["plan"])
    tokenizer = build_tokenizer(words)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        **recipe["model"],
    ))

    def make_batch(_: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return completion_batch(tokenizer, list(itertools.islice(pairs, plan.batch_size)))

    def scored(model: torch.nn.Module) -> float:
        assert validate is not None
        return validate(CausalTextModel(model, tokenizer))

    record = fit(model, plan, make_batch, completion_loss, progress, validate=scored if validate else None,
                 target=recipe.get("validation_target"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return CausalTextModel(model, tokenizer), record


def completion_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A causal LM's cross-entropy on a `completion_batch` (`input_ids, mask, labels`): the loss
    on the completion tokens only."""
    input_ids, mask, labels = batch
    return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


def causal_probe_plan(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast,
                      pairs: Callable[[], Iterator[tuple[str, str]]], n_probe: int, teacher: str = "teacher") -> Any:
    """A `ProbePlan` for a causal LM whose task is `(prompt, completion)` pairs: `pairs()`
    starts a fresh stream; the loss is the completion loss, the mask the attention mask, the
    candidates the decoder blocks (`nexus_kernel.teachers.classes.decoder_blocks`: a class the
    kernel cannot hook is an error naming it and the supported ones)."""
    from nexus_kernel.algorithms.profiling import plan_from_items
    from nexus_kernel.teachers.classes import decoder_blocks

    return plan_from_items(pairs, lambda chunk: completion_batch(tokenizer, chunk), completion_loss,
                           decoder_blocks(model, teacher), n_probe, mask_of=lambda batch: batch[1])


def _locked_items(source: str, split: str, synthetic: Callable[[], Iterable[Any]],
                  read_folder: Callable[[Path, str], Iterable[Any]], convert: Callable[[Any], Any]
                  ) -> Callable[[], Iterator[Any]]:
    """A fresh stream, on each call, of `convert(item)` for the items of a locked `source`: the
    `synthetic()` stream, or `split` of a real folder."""
    from nexus_kernel.kit.datasets import items_of

    def stream() -> Iterator[Any]:
        return map(convert, items_of(source, split, lambda _: synthetic(), read_folder))

    return stream


def choice_batch(tokenizer: PreTrainedTokenizerFast, questions: list[tuple[str, list[str], int]]
                 ) -> tuple[torch.Tensor, ...]:
    """`(input_ids, mask, labels, gold)` for multiple-choice `(prompt, options, gold index)`
    questions: a `completion_batch` whose row `k * i + j` is question `i`'s prompt followed by
    its option `j` (every question has the same number `k` of options), labelled on the
    option's tokens only (not the EOS after it), and each question's gold index."""
    import torch

    widths = {len(options) for _, options, _ in questions}
    if len(widths) != 1:
        raise ValueError(f"every question needs the same number of options, got {sorted(widths)}")
    pairs = [(prompt, option) for prompt, options, _ in questions for option in options]
    input_ids, mask, labels = completion_batch(tokenizer, pairs)
    if SpecialIds.of(tokenizer).eos is not None:  # the scorers weigh the option's text, not its end
        labels[torch.arange(len(pairs)), mask.sum(dim=1) - 1] = IGNORE_INDEX
    return input_ids, mask, labels, torch.tensor([gold for _, _, gold in questions])


def choice_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Cross-entropy of the gold option among each question's options on a `choice_batch`,
    each option scored by its continuation's summed log-likelihood (as the multiple-choice
    scorers do): what the teacher's choice loses when a layer is ablated or removed, where
    the completion loss would also count how sure it is of the option's wording."""
    import torch

    input_ids, mask, labels, gold = batch
    # Only the positions that predict an option token need the vocabulary-wide head: from the
    # one before the earliest labelled token on (right padding), a fraction of each row.
    first = max(int((labels != IGNORE_INDEX).int().argmax(dim=1).min()) - 1, 0)
    width = input_ids.shape[1] - first
    kept = {"logits_to_keep": width} if _keeps_logits(model) else {}
    logits = model(input_ids=input_ids, attention_mask=mask, **kept).logits[:, -width:-1]
    targets = labels[:, first + 1:]
    wanted = targets != IGNORE_INDEX
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    options = (picked * wanted).sum(dim=1).view(len(gold), -1)
    return torch.nn.functional.cross_entropy(options, gold)


def _keeps_logits(model: torch.nn.Module) -> bool:
    """Whether `model.forward` takes transformers' `logits_to_keep` (every causal-LM class the
    kernel supports does; a model without it computes every position's logits)."""
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def text_choice_probe_plan(teacher: Any, n_probe: int, source: str, split: str,
                           synthetic: Callable[[], Iterable[Any]], read_folder: Callable[[Path, str], Iterable[Any]],
                           to_choice: Callable[[Any], tuple[str, list[str], int]]) -> Any:
    """A `ProbePlan` for a loaded text teacher (`teacher.model`, `teacher.folder`) whose task is
    multiple choice: `to_choice(item)` gives `(prompt, options, gold index)`; items come from a
    locked `source` (the `synthetic()` stream, or `split` of a real folder). The loss is
    `choice_loss`, so stage 2 ranks layers (and a student cut from the teacher keeps blocks)
    by what the teacher's answers lose; the samples streamed are questions, each seen with
    every option."""
    from transformers import AutoTokenizer

    from nexus_kernel.algorithms.profiling import plan_from_items
    from nexus_kernel.teachers.classes import decoder_blocks

    tokenizer = AutoTokenizer.from_pretrained(teacher.folder)
    questions = _locked_items(source, split, synthetic, read_folder, to_choice)
    return plan_from_items(questions, lambda chunk: choice_batch(tokenizer, chunk), choice_loss,
                           decoder_blocks(teacher.model, getattr(teacher, "name", "teacher")), n_probe,
                           mask_of=lambda batch: batch[1], samples_of=lambda batch: len(batch[3]))


def text_probe_plan(teacher: Any, n_probe: int, source: str, split: str,
                    synthetic: Callable[[], Iterable[Any]], read_folder: Callable[[Path, str], Iterable[Any]],
                    to_pair: Callable[[Any], tuple[str, str]]) -> Any:
    """`causal_probe_plan` for a loaded text teacher (`teacher.model`, `teacher.folder`) whose
    items come from a locked `source`: the `synthetic()` stream, or `split` of a real folder."""
    from transformers import AutoTokenizer

    pairs = _locked_items(source, split, synthetic, read_folder, to_pair)
    return causal_probe_plan(teacher.model, AutoTokenizer.from_pretrained(teacher.folder), pairs, n_probe,
                             getattr(teacher, "name", "teacher"))
