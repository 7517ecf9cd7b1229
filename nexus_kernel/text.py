"""Text plumbing shared by text-producing demo teachers: a lossless word-and-character
tokenizer, prompt/completion batches, greedy decoding and continuation log-likelihoods.

The tokenizer keeps a fixed set of whole words (the words of a plugin's templates) as single
tokens and spells everything else character by character, so sequences stay short on the demo
tasks while any ASCII text still round-trips exactly. Digits are always single tokens: small
models learn arithmetic far more easily that way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

    from nexus_kernel.training import TrainingRecord

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_CHARS = tuple(chr(code) for code in range(32, 127)) + ("\n",)
# A pre-token is an optionally space-led word, digit or other character, or a lone space.
_PIECE_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^A-Za-z0-9 ]| "

IGNORE_INDEX = -100
"""Label value the loss skips (prompt positions and padding)."""

SMALL_DECODER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
                 "num_attention_heads": 4}
"""The LLaMA-style shape of the text demo teachers (about 0.5M parameters with their vocabulary)."""


def build_tokenizer(words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` whose vocabulary is the special tokens, every printable ASCII
    character (alone, space-led and as a word continuation) and `words` (alone and space-led).
    The same `words` always give the same ids; `save_pretrained` / `AutoTokenizer` round-trip it.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_list = sorted({word for word in words if word.isascii() and word.isalpha()})
    pieces = [*SPECIAL_TOKENS, *_CHARS, *(" " + c for c in _CHARS if c not in " \n"),
              *("##" + c for c in _CHARS if c != " "), *word_list, *(" " + w for w in word_list)]
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    model = models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=1000)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE_PATTERN), behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
    )


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of `text`, without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def completion_batch(
    tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, labels)` for `<s> prompt completion </s>`, right-padded;
    labels are set on the completion and `</s>` only, so the loss teaches answers, not questions.
    """
    import torch

    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for prompt, completion in pairs:
        prompt_ids = [BOS_ID, *encode(tokenizer, prompt)]
        completion_ids = [*encode(tokenizer, completion), EOS_ID]
        rows.append(prompt_ids + completion_ids)
        labels.append([IGNORE_INDEX] * len(prompt_ids) + completion_ids)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_ids = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for index, (row, label) in enumerate(zip(rows, labels, strict=True)):
        input_ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        label_ids[index, : len(label)] = torch.tensor(label)
    return input_ids, mask, label_ids


def left_padded(
    tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of `<s> prompt`, left-padded so every row ends together."""
    import torch

    rows = [[BOS_ID, *encode(tokenizer, prompt)] for prompt in prompts]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row):] = torch.tensor(row)
        mask[index, width - len(row):] = 1
    return input_ids, mask


NextTokenLogits = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""`(input_ids, attention_mask, position_ids) -> logits (batch, seq, vocab)` of a causal decoder."""

StepLogits = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", Any], "tuple[torch.Tensor, Any]"]
"""`(new_ids, attention_mask, new_position_ids, past) -> (logits of the new positions, past)`:
one decoding step of a causal decoder that keeps its own state in `past` (None on the first
call, which gets the whole prompt; a key/value cache for a model that has one). The mask
covers every position so far, the new ones included."""


def recomputing(logits_of: NextTokenLogits) -> StepLogits:
    """A decoding step for a decoder without a cache: each step reruns the whole sequence
    (what `past` keeps). Slower than a cache by about the sequence length; for models whose
    forward cannot take one."""
    import torch

    def step(new_ids: torch.Tensor, mask: torch.Tensor, new_positions: torch.Tensor, past: Any
             ) -> tuple[torch.Tensor, Any]:
        ids = new_ids if past is None else torch.cat([past, new_ids], dim=1)
        logits = logits_of(ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0))
        return logits[:, -new_ids.shape[1]:], ids

    return step


@functools.cache
def _cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
    return "cache" if "cache" in parameters else "past_key_values"


def cache_arguments(model: torch.nn.Module, past: Any) -> dict[str, Any]:
    """The keyword arguments that hand `past` to a transformers model's `forward` and ask for
    the cache back: `cache` from transformers 5.24 on, `past_key_values` before."""
    return {_cache_keyword(type(model)): past, "use_cache": True}


def cache_of(output: Any) -> Any:
    """The key/value cache a transformers forward returned (under either name, see `cache_arguments`)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cached_step(model: torch.nn.Module) -> StepLogits:
    """A decoding step for a transformers causal LM through its key/value cache."""
    def step(new_ids: torch.Tensor, mask: torch.Tensor, new_positions: torch.Tensor, past: Any
             ) -> tuple[torch.Tensor, Any]:
        output = model(input_ids=new_ids, attention_mask=mask, position_ids=new_positions,
                       **cache_arguments(model, past))
        return output.logits, cache_of(output)

    return step


def greedy_decode(
    step: StepLogits, input_ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuation of left-padded prompts until `</s>` or `max_new_tokens`; returns the
    new token ids per row, without `</s>`. Position ids come from the mask so left padding does
    not shift positions (the batch answer equals the one-by-one answer). Each step feeds `step`
    only the new tokens (see `StepLogits`).
    """
    import torch

    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    generated: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    new_ids, past = input_ids, None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -new_ids.shape[1]:]
            logits, past = step(new_ids, mask, positions, past)
            next_ids = logits[:, -1].argmax(dim=-1)
            for row in torch.nonzero(~finished).flatten().tolist():
                if next_ids[row].item() == EOS_ID:
                    finished[row] = True
                else:
                    generated[row].append(int(next_ids[row]))
            if bool(finished.all()):
                break
            new_ids = next_ids[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return generated


def complete(step: StepLogits, tokenizer: PreTrainedTokenizerFast,
             prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy text completions of one batch of `prompts` (see `greedy_decode`)."""
    input_ids, mask = left_padded(tokenizer, prompts)
    return [tokenizer.decode(ids) for ids in greedy_decode(step, input_ids, mask, max_new_tokens)]


def continuation_logprobs(
    logits_of: NextTokenLogits, tokenizer: PreTrainedTokenizerFast,
    requests: Sequence[tuple[str, str]],
) -> list[float]:
    """Sum of log-probabilities of each `continuation` after its `prompt` (the lm-evaluation-
    harness `loglikelihood` request), computed for the whole batch in one forward pass."""
    import torch

    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for prompt, continuation in requests:
        prompt_ids = [BOS_ID, *encode(tokenizer, prompt)]
        continuation_ids = encode(tokenizer, continuation)
        if not continuation_ids:
            raise ValueError(f"empty continuation after prompt {prompt[-40:]!r}")
        rows.append(prompt_ids + continuation_ids)
        spans.append((len(prompt_ids), len(prompt_ids) + len(continuation_ids)))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    positions = torch.arange(width).expand(len(rows), width)
    with torch.inference_mode():
        logprobs = torch.log_softmax(logits_of(input_ids, mask, positions).float(), dim=-1)
    totals = []
    for index, (start, end) in enumerate(spans):
        targets = input_ids[index, start:end]
        totals.append(float(logprobs[index, start - 1 : end - 1].gather(1, targets[:, None]).sum()))
    return totals


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
    from nexus_kernel.profiling import plan_from_items, repeated_blocks

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

    from nexus_kernel.datasets import items_of

    def pairs() -> Iterator[tuple[str, str]]:
        return map(to_pair, items_of(source, split, lambda _: synthetic(), read_folder))

    return causal_probe_plan(teacher.model, AutoTokenizer.from_pretrained(teacher.folder), pairs, n_probe)


def text_model_of(model: Any) -> Any:
    """What text benchmarks score: a `StudentCapability` as a `StudentTextModel`, a loaded
    teacher (`.model`, `.folder`) as a `CausalTextModel` with its own tokenizer."""
    from transformers import AutoTokenizer

    from nexus_kernel.student import StudentCapability, StudentTextModel

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
    from nexus_kernel.student import StudentBatch

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
