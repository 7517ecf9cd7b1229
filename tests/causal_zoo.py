"""Tiny random-init causal LMs of the common transformers classes, each with its own tokenizer.

`build_zoo_teacher(folder, spec, texts)` saves a `save_pretrained` folder (safetensors weights)
with a BPE tokenizer trained here on `texts` with the `tokenizers` library and a chat template,
as a user's teacher folder would be. The specs copy what makes each family awkward for a
kernel: special tokens at the end of the vocabulary (GPT-2, Qwen2, Phi-3), no BOS (Qwen2), no
pad token (Mistral), pad and BOS swapped round (Gemma), byte-level or SentencePiece-style
pre-tokenization, a vocabulary padded past the tokenizer (Qwen2, Phi-3), tied embeddings
(Gemma, GPT-2, LLaMA as SmolLM2 has it), grouped-query attention, absolute positions (GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
VOCABULARY = 320


@dataclass(frozen=True)
class ZooSpec:
    """One causal-LM class: its config class and shape, and how its tokenizer is laid out."""

    architecture: str
    config_class: str
    config: dict[str, Any]
    blocks: str
    """Where the class keeps its decoder blocks (`<blocks>.0`, `<blocks>.1`, ...)."""
    byte_level: bool
    specials_first: tuple[str, ...] = ()
    specials_last: tuple[str, ...] = ()
    roles: dict[str, str | None] = field(default_factory=dict)
    """`bos`, `eos`, `pad`, `unk` -> token (None: the tokenizer has none)."""
    pad_vocabulary_to: int = 0
    """Round the model's vocabulary up to a multiple of this (0: the tokenizer's length)."""


_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
          "max_position_embeddings": 256}
_LLAMA_ROLES = {"bos": "<s>", "eos": "</s>", "pad": "</s>", "unk": "<unk>"}

SPECS = (
    ZooSpec("LlamaForCausalLM", "LlamaConfig", {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True},
            "model.layers", False, ("<unk>", "<s>", "</s>"), (), _LLAMA_ROLES),
    ZooSpec("Qwen2ForCausalLM", "Qwen2Config", {**_SMALL, "num_key_value_heads": 2},
            "model.layers", True, (), ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None}, pad_vocabulary_to=64),
    ZooSpec("MistralForCausalLM", "MistralConfig", {**_SMALL, "num_key_value_heads": 2, "sliding_window": 64},
            "model.layers", False, ("<unk>", "<s>", "</s>"), (), {**_LLAMA_ROLES, "pad": None}),
    ZooSpec("Phi3ForCausalLM", "Phi3Config", {**_SMALL, "num_key_value_heads": 4},
            "model.layers", False, ("<unk>", "<s>", "</s>"), ("<|endoftext|>", "<|assistant|>", "<|end|>"),
            {"bos": "<s>", "eos": "<|end|>", "pad": "<|endoftext|>", "unk": "<unk>"}, pad_vocabulary_to=64),
    ZooSpec("GemmaForCausalLM", "GemmaConfig", {**_SMALL, "num_key_value_heads": 1, "head_dim": 8},
            "model.layers", False, ("<pad>", "<eos>", "<bos>", "<unk>"), (),
            {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"}),
    ZooSpec("GPT2LMHeadModel", "GPT2Config", {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 256},
            "transformer.h", True, (), ("<|endoftext|>",),
            {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": None}),
    ZooSpec("GPTNeoXForCausalLM", "GPTNeoXConfig", {**_SMALL, "intermediate_size": 64},
            "gpt_neox.layers", True, ("<|endoftext|>", "<|padding|>"), (),
            {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|padding|>", "unk": None}),
)
"""One spec per causal-LM class the kernel supports (`nexus_kernel.teachers.classes`)."""


def train_tokenizer(spec: ZooSpec, texts: Iterable[str]) -> Any:
    """A BPE `PreTrainedTokenizerFast` trained on `texts`, laid out as `spec` says, with a
    chat template. Byte-level ones read any text; the others know every printable ASCII
    character (a SentencePiece-style `▁` marks word starts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk = spec.roles.get("unk")
    tokenizer = Tokenizer(models.BPE(unk_token=unk if not spec.byte_level else None))
    if spec.byte_level:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        alphabet = [chr(code) for code in range(33, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(vocab_size=VOCABULARY - len(spec.specials_last), initial_alphabet=alphabet,
                                  special_tokens=list(spec.specials_first), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens(list(spec.specials_last))
    bos = spec.roles.get("bos")
    if bos is not None and not spec.byte_level:  # SentencePiece families add BOS themselves
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    roles = {f"{role}_token": token for role, token in spec.roles.items() if token is not None}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_zoo_teacher(folder: Path, spec: ZooSpec, texts: Iterable[str], seed: int = 0) -> Path:
    """Save a random-init `spec.architecture` and its trained tokenizer to `folder`."""
    import torch
    import transformers

    tokenizer = train_tokenizer(spec, texts)
    vocabulary = len(tokenizer)
    if spec.pad_vocabulary_to:
        vocabulary = -(-vocabulary // spec.pad_vocabulary_to) * spec.pad_vocabulary_to
    config = getattr(transformers, spec.config_class)(
        vocab_size=vocabulary, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **spec.config)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.architecture)(config)
    folder.mkdir(parents=True, exist_ok=True)
    was_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar per class
    try:
        model.save_pretrained(folder)
    finally:
        if was_on:
            transformers.utils.logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    return folder
