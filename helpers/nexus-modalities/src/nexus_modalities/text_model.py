"""What text benchmarks score: a causal LM (teacher) or a text capability of the student, both
behind greedy `generate` and `loglikelihoods` (the lm-evaluation-harness request types)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexus_kernel.student.decoding import cached_step, complete, continuation_logprobs

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast


class CausalTextModel:
    """A causal LM and its tokenizer behind the two calls text benchmarks make: greedy
    `generate` and `loglikelihoods`."""

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


def text_model_of(model: Any) -> Any:
    """What text benchmarks score: a `StudentCapability` as a `StudentTextModel`, a loaded
    teacher (`.model`, `.folder`) as a `CausalTextModel` with its own tokenizer."""
    from transformers import AutoTokenizer

    from nexus_kernel.student.model import StudentCapability, StudentTextModel

    if isinstance(model, StudentCapability):
        return StudentTextModel(model.student, model.capability)
    return CausalTextModel(model.model, AutoTokenizer.from_pretrained(model.folder))
