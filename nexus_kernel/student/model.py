"""The student: one shared causal-LM backbone and exactly one low-rank adapter per capability.

An adapter holds low-rank deltas for named `nn.Linear` modules of the backbone, the input
projector its modality needs (any module from raw input `(batch, *input_shape)` to
`(batch, tokens, hidden)`, supplied by the owning plugin; text has none), an output head for embedding capabilities, and the anchor projections stage 4 trains (hidden
state into the teacher's PCA coefficients; training-only, dropped when packaging). The deltas
are applied for whichever capability is active (a plain linear's forward, or a forward hook on
a quantized one), so the backbone keeps its own module names and loads and saves as the
transformers model it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nexus_kernel.contracts import AdapterSpec
from nexus_kernel.errors import NexusError


class AdapterError(NexusError):
    """An adapter does not fit the backbone, or a capability got a second adapter."""


def escape(name: str) -> str:
    """A module name usable as a `ModuleDict` key (dots are not allowed there)."""
    return name.replace(".", "__")


class LowRankDelta(nn.Module):
    """`x -> up(down(x))` with `down: in -> rank`, `up: rank -> out`; `up` starts at zero so a
    new adapter leaves the backbone's output unchanged. Both are bias-free `nn.Linear` layers,
    so packaging quantizes them like any other linear."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.utils.skip_init(nn.Linear, in_features, rank, bias=False)
        self.up = nn.utils.skip_init(nn.Linear, rank, out_features, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(torch.randn(rank, in_features) / math.sqrt(in_features))
            self.up.weight.zero_()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(inputs))


class _RoutedForward:
    """A plain linear's own `forward` replaced by the student's (`NexusStudent._merged_forward`)
    until `remove()`: the handle `_hooked` keeps, as it keeps a forward hook's. An instance
    attribute, so the module's name, parameters and state dict stay the transformers model's."""

    def __init__(self, module: nn.Module, forward: Any) -> None:
        self.module = module
        module.forward = forward  # type: ignore[method-assign]

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


class EmbeddingHead(nn.Module):
    """The mean of the final hidden states over real positions, mapped to `dim`."""

    def __init__(self, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, dim)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(masked_mean(hidden, mask))


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, seq, dim)` averaged over positions where `mask` is 1 (all when None, or when
    the mask does not match the sequence)."""
    if hidden.dim() == 2:
        return hidden
    if mask is None or mask.shape != hidden.shape[:2]:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class CapabilityAdapter(nn.Module):
    """One capability's trainable part of the student (see the module docstring)."""

    def __init__(self, spec: AdapterSpec, projector: nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.deltas = nn.ModuleDict({escape(name): LowRankDelta(fan_in, fan_out, spec.rank)
                                     for name, (fan_in, fan_out) in spec.targets.items()})
        self.projector = projector
        self.head = EmbeddingHead(spec.hidden_size, spec.output_dim) if spec.output == "embedding" else None
        # One projection per teacher key layer, in the order of `spec.anchored_layers`.
        self.anchors = nn.ModuleDict({str(index): nn.Linear(spec.hidden_size, spec.rank)
                                      for index in range(len(spec.anchored_layers))})

    def delta(self, module_name: str) -> LowRankDelta | None:
        key = escape(module_name)
        return self.deltas[key] if key in self.deltas else None  # type: ignore[return-value]

    def inference_state(self) -> dict[str, torch.Tensor]:
        """Weights a packaged student needs: everything but the anchor projections."""
        return {name: value for name, value in self.state_dict().items() if not name.startswith("anchors.")}


def linear_targets(backbone: nn.Module, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """`(in_features, out_features)` of each named `nn.Linear` of the backbone; an unknown name
    or a module that is not linear is an error."""
    modules = dict(backbone.named_modules())
    shapes = {}
    for name in names:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            found = "missing" if module is None else type(module).__name__
            raise AdapterError(f"adapter target {name!r} is not an nn.Linear of the backbone ({found})")
        shapes[name] = (module.in_features, module.out_features)
    return shapes


def default_targets(backbone: nn.Module) -> list[str]:
    """Every `nn.Linear` inside the backbone's decoder blocks (attention and MLP projections)."""
    from nexus_kernel.algorithms.profiling import repeated_blocks

    blocks = repeated_blocks(backbone)
    return [name for name, module in backbone.named_modules()
            if isinstance(module, nn.Linear) and any(name.startswith(block + ".") for block in blocks)]


@dataclass
class StudentBatch:
    """Tensors for one training step of one capability.

    The student reads `prefix` (raw modality input for the adapter's projector) and then the
    text `input_ids`; `labels` (same shape as `input_ids`, -100 where no loss) carry the
    teacher's completion for sequence-level distillation, `target` the teacher's embedding
    for cosine distillation; `anchor` holds, per anchored student layer, the teacher's whitened
    PCA coefficients `(batch, rank)`.
    """

    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    target: torch.Tensor | None = None
    anchor: dict[int, torch.Tensor] = field(default_factory=dict)
    soft_ids: torch.Tensor | None = None
    soft_logprobs: torch.Tensor | None = None
    """For `kl`: the teacher's top-k token ids and log-probabilities `(batch, seq, k)` at the
    positions whose `labels` are set (the distribution over the token at that position).
    For `uld`: no ids, and the teacher's sorted top-k log-probabilities `(batch, teacher
    positions, k)` at its own completion positions, `soft_lengths` `(batch,)` of them real."""
    soft_lengths: torch.Tensor | None = None
    token_anchor: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per key layer whose tokens line up with the student's text tokens, the teacher's
    whitened coefficients per text position `(batch, seq, rank)` (zeros on padding)."""

    @property
    def size(self) -> int:
        for tensor in (self.input_ids, self.prefix, self.target):
            if tensor is not None:
                return int(tensor.shape[0])
        raise ValueError("an empty StudentBatch")


@dataclass
class StudentOutput:
    logits: torch.Tensor | None
    embedding: torch.Tensor | None
    pooled: dict[int, torch.Tensor]
    """Per anchored layer, the masked mean of that block's output `(batch, hidden)`."""
    text_hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per anchored layer, that block's output at the text positions `(batch, seq, hidden)`."""


class NexusStudent(nn.Module):
    """A transformers causal LM (`backbone`) plus `adapters`, one per capability.

    `backbone` must expose `.model(inputs_embeds=..., output_hidden_states=True)`,
    `.get_input_embeddings()` and `.lm_head` (LLaMA, Mistral, Qwen and most decoder-only LMs).
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.adapters = nn.ModuleDict()
        self._route: list[CapabilityAdapter | None] = [None]  # a list: not registered as a submodule
        self._hooked: dict[str, Any] = {}  # target module name -> its hook handle

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    def add_adapter(self, name: str, adapter: CapabilityAdapter) -> None:
        """Attach `adapter` for capability `name`; a second adapter for one capability is an error."""
        if name in self.adapters:
            raise AdapterError(f"capability {name!r} already has an adapter: exactly one per capability")
        self._hook_deltas(adapter)
        self.adapters[name] = adapter

    def _hook_deltas(self, adapter: CapabilityAdapter) -> None:
        modules = dict(self.backbone.named_modules())
        for key in adapter.deltas:
            target = key.replace("__", ".")
            if target in self._hooked:
                continue
            module = modules[target]
            if type(module) is nn.Linear:
                self._hooked[target] = _RoutedForward(module, self._merged_forward(target, module))
            else:
                self._hooked[target] = module.register_forward_hook(self._apply_delta(target))

    def reattach_deltas(self) -> None:
        """Hook the deltas onto the backbone's current modules: needed once its linears were
        replaced (quantization swaps each `nn.Linear` for a new module, hooks not included)."""
        for handle in self._hooked.values():
            handle.remove()
        self._hooked.clear()
        for adapter in self.adapters.values():
            self._hook_deltas(adapter)  # type: ignore[arg-type]

    def _merged_forward(self, target: str, linear: nn.Linear) -> Any:
        """The forward of a plain `nn.Linear` target (one that quantization has not replaced).

        In training mode, with an active delta of plain linears: one matmul with
        `W + up.weight @ down.weight`, the same map as `W x + up(down(x))` up to float rounding.
        The three thin matmuls (and their backward) become one, and in the joint phase the
        backbone's own weight gradient carries the adapter's: benchmarks/lora.py measures the
        step. In eval mode, or with a quantized delta: `W x + b + up(down(x))`, the ops the
        forward hook of other layers applies and PEFT's LoRA layer computes, so inference,
        scoring and an exported adapter stay bit for bit what they were."""

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            delta = self._active_delta(target)
            if delta is None:
                return nn.functional.linear(inputs, linear.weight, linear.bias)
            if linear.training and type(delta.down) is nn.Linear and type(delta.up) is nn.Linear:
                return nn.functional.linear(inputs, linear.weight + delta.up.weight @ delta.down.weight, linear.bias)
            return nn.functional.linear(inputs, linear.weight, linear.bias) + delta(inputs)

        return forward

    def _active_delta(self, target: str) -> LowRankDelta | None:
        """The active capability's delta on `target`, if it has one."""
        active = self._route[0]
        return active.delta(target) if active is not None else None

    def _apply_delta(self, target: str) -> Any:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            delta = self._active_delta(target)
            return output if delta is None else output + delta(inputs[0])
        return hook

    @contextmanager
    def active(self, name: str) -> Iterator[CapabilityAdapter]:
        """Route the backbone through capability `name`'s adapter inside the block."""
        if name not in self.adapters:
            raise AdapterError(f"the student has no adapter for {name!r} (has: {', '.join(self.adapters)})")
        previous = self._route[0]
        self._route[0] = self.adapters[name]  # type: ignore[assignment]
        try:
            yield self._route[0]  # type: ignore[misc]
        finally:
            self._route[0] = previous

    def freeze_backbone(self, frozen: bool = True) -> None:
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)

    def _run(self, adapter: CapabilityAdapter, input_ids: torch.Tensor | None, mask: torch.Tensor | None,
             positions: torch.Tensor | None, prefix: torch.Tensor | None, hidden_states: bool,
             cache: dict[str, Any] | None = None) -> tuple[Any, int, torch.Tensor]:
        if prefix is None and input_ids is None:
            raise AdapterError(f"capability {adapter.spec.capability!r}: the batch has neither a prefix nor input_ids "
                               "(a text-in capability reads input_ids, an image or audio one a prefix)")
        parts, masks = [], []
        if prefix is not None:
            if adapter.projector is None:
                raise AdapterError(f"capability {adapter.spec.capability!r} got a prefix input but its adapter has no projector")
            projected = adapter.projector(prefix)
            parts.append(projected)
            masks.append(torch.ones(projected.shape[:2], dtype=torch.long))
        if input_ids is not None:
            parts.append(self.backbone.get_input_embeddings()(input_ids))
            masks.append(mask if mask is not None else torch.ones_like(input_ids))
        embeds = torch.cat(parts, dim=1)
        full_mask = torch.cat(masks, dim=1)
        prefix_length = parts[0].shape[1] if prefix is not None else 0
        if positions is None:
            positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
        elif prefix_length:
            positions = torch.cat([torch.arange(prefix_length).expand(positions.shape[0], -1),
                                   positions + prefix_length], dim=1)
        outputs = self.backbone.model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                                      output_hidden_states=hidden_states, **(cache or {}))
        return outputs, prefix_length, full_mask

    def forward(self, name: str, batch: StudentBatch) -> StudentOutput:
        """Run capability `name` on a training batch: logits over the text positions (text-out
        capabilities given `input_ids`), the embedding (embedding capabilities, whatever
        their input), and the pooled hidden state of each anchored layer."""
        with self.active(name) as adapter:
            outputs, prefix_length, mask = self._run(adapter, batch.input_ids, batch.attention_mask, None,
                                                     batch.prefix, hidden_states=True)
            last = outputs.last_hidden_state
            logits = (self.backbone.lm_head(last[:, prefix_length:])
                      if batch.input_ids is not None and adapter.head is None else None)
            embedding = adapter.head(last, mask) if adapter.head is not None else None
            layers = set(adapter.spec.anchored_layers)
            pooled = {layer: masked_mean(outputs.hidden_states[layer + 1], mask) for layer in layers}
            text_hidden = ({layer: outputs.hidden_states[layer + 1][:, prefix_length:] for layer in layers}
                           if batch.input_ids is not None else {})
        return StudentOutput(logits, embedding, pooled, text_hidden)

    def text_logits(self, name: str, input_ids: torch.Tensor, mask: torch.Tensor,
                    positions: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `(batch, seq, vocab)` over the text positions, for decoding and scoring."""
        with self.active(name) as adapter:
            outputs, prefix_length, _ = self._run(adapter, input_ids, mask, positions, prefix, hidden_states=False)
            return self.backbone.lm_head(outputs.last_hidden_state[:, prefix_length:])

    def text_step(self, name: str, new_ids: torch.Tensor, mask: torch.Tensor, new_positions: torch.Tensor,
                  past: Any) -> tuple[torch.Tensor, Any]:
        """One cached decoding step of a text capability (`nexus_kernel.student.decoding.StepLogits`): the
        logits of `new_ids` and the key/value cache. `mask` covers past and new tokens."""
        from nexus_kernel.student.decoding import cache_arguments, cache_of

        with self.active(name) as adapter:
            outputs, _, _ = self._run(adapter, new_ids, mask, new_positions, None, hidden_states=False,
                                      cache=cache_arguments(self.backbone.model, past))
            return self.backbone.lm_head(outputs.last_hidden_state), cache_of(outputs)

    def embed(self, name: str, prefix: torch.Tensor | None = None, *, input_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding `(batch, dim)` of embedding capability `name`: the same head and
        inputs as training (`forward`), without the anchors.

        `prefix` is the raw modality input of an image or audio capability (what its
        projector reads); `input_ids` and `attention_mask` (1 on real tokens, 0 on padding;
        all ones when None) are text in the student's tokenizer, e.g. from
        `nexus_kernel.student.decoding.left_padded` (or call `embed_texts` there). Give either
        or both (prefix first, then the text). A capability without an embedding head, or a
        call with neither input, is an `AdapterError`.
        """
        with self.active(name) as adapter:
            if adapter.head is None:
                raise AdapterError(f"capability {name!r} has no embedding head (its output is {adapter.spec.output!r})")
            outputs, _, mask = self._run(adapter, input_ids, attention_mask, None, prefix, hidden_states=False)
            return adapter.head(outputs.last_hidden_state, mask)


@dataclass(frozen=True)
class StudentCapability:
    """The student seen as one capability's model: what `retention_metric` gets for a student."""

    student: NexusStudent
    capability: str


class StudentTextModel:
    """One text capability of the student behind `generate` and `loglikelihoods`, the calls
    text benchmarks make of a teacher (as `nexus_modalities.text_model.CausalTextModel` does)."""

    def __init__(self, student: NexusStudent, capability: str, batch_size: int = 64) -> None:
        self.student = student
        self.capability = capability
        self.tokenizer = student.tokenizer
        self.batch_size = batch_size

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.student.text_logits(self.capability, input_ids, mask, positions)

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        from nexus_kernel.student.decoding import complete

        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            answers += complete(functools.partial(self.student.text_step, self.capability), self.tokenizer,
                                prompts[start : start + self.batch_size], max_new_tokens)
        return answers

    def loglikelihoods(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        from nexus_kernel.student.decoding import continuation_logprobs

        totals: list[float] = []
        for start in range(0, len(requests), self.batch_size):
            totals += continuation_logprobs(self._logits, self.tokenizer, requests[start : start + self.batch_size])
        return totals
