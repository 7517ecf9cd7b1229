"""The demo reasoning teacher: a small LLaMA-style decoder trained on synthetic MMLU-format questions."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nexus_kernel import Score
from nexus_kernel.contracts import DemoTeacher
from nexus_kernel.training import TrainingPlan

from nexus_cap_reasoning import benchmark
from nexus_cap_reasoning.data import TEMPLATE_WORDS, SyntheticRecipe

NAME = "nexus-demo-reasoning"
MINIMUM = 0.90
MODEL = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 256}
PLAN = TrainingPlan(steps=1400, learning_rate=3e-3, batch_size=64)


def demo() -> DemoTeacher:
    recipe = {"seed": 42, "data": SyntheticRecipe().__dict__, "model": MODEL, "plan": PLAN.to_json()}
    return DemoTeacher(NAME, "reasoning", recipe, PLAN.steps, build, benchmark.NAME, MINIMUM)


def build(folder: Path, recipe: Mapping[str, Any], progress: Callable[[int], None]) -> dict[str, Score]:
    """Train the teacher `recipe` describes, save it to `folder`, return its held-out scores."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.text import CausalTextModel, build_tokenizer, completion_batch
    from nexus_kernel.training import fit

    data = SyntheticRecipe(**recipe["data"])
    plan = TrainingPlan(**recipe["plan"])
    tokenizer = build_tokenizer(TEMPLATE_WORDS)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0, **recipe["model"],
    ))
    stream = data.train()

    def make_batch(_: int) -> Any:
        questions = itertools.islice(stream, plan.batch_size)
        return completion_batch(tokenizer, [(benchmark.prompt_of(q), f" {q.answer}") for q in questions])

    def loss_of(model: Any, batch: Any) -> Any:
        input_ids, mask, labels = batch
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    fit(model, plan, make_batch, loss_of, progress)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return benchmark.evaluate(CausalTextModel(model, tokenizer), data.test())
