"""How the student (and the text demo teachers) read and write text: a lossless
word-and-character tokenizer, prompt/completion batches, greedy decoding with a key-value
cache and continuation log-likelihoods.

The tokenizer keeps a fixed set of whole words (the words of a plugin's templates) as single
tokens and spells everything else character by character, so sequences stay short on the demo
tasks while any ASCII text still round-trips exactly. Digits are always single tokens: small
models learn arithmetic far more easily that way.

The batch helpers take any tokenizer's own special tokens (`SpecialIds.of`): a real causal LM's
BOS, EOS and pad ids sit wherever its vocabulary puts them, and some tokenizers have no BOS
(Qwen2) or no pad token (LLaMA, Mistral).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_CHARS = tuple(chr(code) for code in range(32, 127)) + ("\n",)
# A pre-token is an optionally space-led word, digit or other character, or a lone space.
_PIECE_PATTERN = r" ?[A-Za-z]+| ?[0-9]| ?[^A-Za-z0-9 ]| "

IGNORE_INDEX = -100
"""Label value the loss skips (prompt positions and padding)."""


@dataclass(frozen=True)
class SpecialIds:
    """The special ids a tokenizer's sequences are built with: `bos` (None: it has none), `eos`
    ends a completion and stops greedy decoding (None: only the length does), `pad` fills
    masked positions (its pad token, else its EOS, else 0: a masked position's id is never
    read)."""

    bos: int | None
    eos: int | None
    pad: int

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialIds:
        bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        fill = pad if pad is not None else eos if eos is not None else 0
        return cls(None if bos is None else int(bos), None if eos is None else int(eos), int(fill))

    def start(self) -> list[int]:
        """What every sequence starts with before its text: the BOS, else the EOS as a document
        boundary (as lm-evaluation-harness does for a tokenizer without BOS), so the first text
        token has a prediction; empty only for a tokenizer with neither."""
        if self.bos is not None:
            return [self.bos]
        return [self.eos] if self.eos is not None else []


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
    tokenizer: PreTrainedTokenizerFast, pairs: Sequence[tuple[str, str]], whole_text: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, labels)` for `<s> prompt completion </s>` (the tokenizer's
    own `SpecialIds`: `start()`, and its EOS when it has one), right-padded; labels are set on
    the completion and `</s>` only, so the loss teaches answers, not questions; with
    `whole_text` on the prompt's tokens too (all but the start tokens).
    """
    import torch

    special = SpecialIds.of(tokenizer)
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for prompt, completion in pairs:
        prompt_ids = [*special.start(), *encode(tokenizer, prompt)]
        completion_ids = [*encode(tokenizer, completion), *([] if special.eos is None else [special.eos])]
        rows.append(prompt_ids + completion_ids)
        start = len(special.start()) if whole_text else len(prompt_ids)
        labels.append([IGNORE_INDEX] * start + prompt_ids[start:] + completion_ids)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
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
    """`(input_ids, attention_mask)` of `<s> prompt` (the tokenizer's own `SpecialIds`),
    left-padded so every row ends together."""
    import torch

    special = SpecialIds.of(tokenizer)
    rows = [[*special.start(), *encode(tokenizer, prompt)] for prompt in prompts]
    if not all(rows):
        raise ValueError("an empty prompt, and the tokenizer has neither a BOS nor an EOS token to start it with")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row):] = torch.tensor(row)
        mask[index, width - len(row):] = 1
    return input_ids, mask


class TextEmbedder(Protocol):
    """What `embed_texts` needs of a student (`nexus_kernel.student.model.NexusStudent` is one)."""

    tokenizer: Any

    def embed(self, name: str, prefix: torch.Tensor | None = None, *, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...


def embed_texts(student: TextEmbedder, name: str, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """The embeddings `(len(texts), dim)` of a text-in, embedding-out capability `name` of
    `student`: each text tokenized with the student's tokenizer as `<s> text` (`left_padded`,
    batches of `batch_size`), run through `NexusStudent.embed` without gradients. A plugin's
    `student_batch` should tokenize its texts the same way (`left_padded` into `input_ids` and
    `attention_mask`), so scoring sees what training saw. No texts is a `ValueError`."""
    import torch

    if not texts:
        raise ValueError(f"{name}: no texts to embed")
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            input_ids, mask = left_padded(student.tokenizer, texts[start : start + batch_size])
            rows.append(student.embed(name, input_ids=input_ids, attention_mask=mask))
    return torch.cat(rows)


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
    eos_id: int | None = EOS_ID,
) -> list[list[int]]:
    """Greedy continuation of left-padded prompts until `eos_id` (None: none stops a row) or
    `max_new_tokens`; returns the new token ids per row, without the EOS. Position ids come from
    the mask so left padding does not shift positions (the batch answer equals the one-by-one answer). Each step feeds `step`
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
                if next_ids[row].item() == eos_id:
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
    """Greedy text completions of one batch of `prompts` (see `greedy_decode`), stopping at the
    tokenizer's EOS. (An id past the tokenizer's vocabulary, from a model whose embedding is
    padded past it, decodes to nothing.)"""
    input_ids, mask = left_padded(tokenizer, prompts)
    rows = greedy_decode(step, input_ids, mask, max_new_tokens, eos_id=SpecialIds.of(tokenizer).eos)
    return [tokenizer.decode(ids) for ids in rows]


def continuation_logprobs(
    logits_of: NextTokenLogits, tokenizer: PreTrainedTokenizerFast,
    requests: Sequence[tuple[str, str]],
) -> list[float]:
    """Sum of log-probabilities of each `continuation` after its `prompt` (the lm-evaluation-
    harness `loglikelihood` request), computed for the whole batch in one forward pass. Each
    row starts as `left_padded` starts it (`SpecialIds.start`)."""
    import torch

    special = SpecialIds.of(tokenizer)
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for prompt, continuation in requests:
        prompt_ids = [*special.start(), *encode(tokenizer, prompt)]
        continuation_ids = encode(tokenizer, continuation)
        if not continuation_ids:
            raise ValueError(f"empty continuation after prompt {prompt[-40:]!r}")
        if not prompt_ids:
            raise ValueError("an empty prompt, and the tokenizer has neither a BOS nor an EOS token to start it with")
        rows.append(prompt_ids + continuation_ids)
        spans.append((len(prompt_ids), len(prompt_ids) + len(continuation_ids)))
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), special.pad, dtype=torch.long)
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
