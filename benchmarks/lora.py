"""Nexus's low-rank deltas against PEFT's LoRA layers, training the same adapter on the same
batches, in one run: steps per second and the loss.

The student is the default stage-3 shape (LLaMA-style, `[student]` defaults, the demo's
vocabulary size) with one adapter of rank 21 on every linear of its decoder blocks (the demo
math adapter's shape). Three ways to train it, each from the same start:

- `merged`: `NexusStudent` in training mode, as stage 4 trains: each target computes one matmul
  with `W + up @ down` (`NexusStudent._merged_forward`);
- `unmerged`: the same student with its linears in eval mode, so each target computes
  `W x + up(down(x))` (three matmuls), what inference and the export compute;
- `peft`: `get_peft_model` with `LoraConfig(r=21, lora_alpha=21, targets by full name)`, its
  `lora_A`/`lora_B` set to the same initial weights (`up` = `lora_B` starts non-zero here, so
  all start from the same non-trivial adapter).

All train with cross-entropy on the same random batches and AdamW, once with the backbone
frozen (stage 4's adapter phase) and once with it trained too (the joint phase). Rounds
alternate; the best of each gives steps/s and the ratios against `merged`; the losses after the
last step say whether they train the same function (float differences only).

    python benchmarks/lora.py [--steps 60] [--rounds 3] [--threads 1] [--json f.json]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from nexus_kernel.run.fsio import atomic_write_json

RANK = 21
BATCH, LENGTH, VOCAB = 32, 48, 459


def build() -> tuple[Any, Any, list[str]]:
    """The Nexus student with its adapter, and a PEFT model on a copy of the same backbone
    with the same adapter weights; the target names."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.config import SCHEMA
    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.student.decoding import build_tokenizer
    from nexus_kernel.student.model import CapabilityAdapter, NexusStudent, default_targets, linear_targets

    torch.manual_seed(0)
    shape = {key: item.default for key, item in SCHEMA["student"].items()}
    backbone = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=shape["hidden_size"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_positions"]))
    twin = copy.deepcopy(backbone)
    names = default_targets(backbone)
    student = NexusStudent(backbone, build_tokenizer())
    adapter = CapabilityAdapter(AdapterSpec(capability="math", rank=RANK, hidden_size=shape["hidden_size"],
                                            targets=linear_targets(backbone, names)))
    for delta in adapter.deltas.values():
        torch.nn.init.normal_(delta.up.weight, std=0.02)
    adapter.anchors = torch.nn.ModuleDict()
    student.add_adapter("math", adapter)
    student.freeze_backbone()
    peft_model = get_peft_model(twin, LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules=names))
    with torch.no_grad():
        for name in names:
            layer = peft_model.base_model.model.get_submodule(name)
            delta = adapter.delta(name)
            layer.lora_A["default"].weight.copy_(delta.down.weight)
            layer.lora_B["default"].weight.copy_(delta.up.weight)
    return student, peft_model, names


def batches(steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator) for _ in range(steps)]


def train(step_logits: Any, parameters: list[torch.nn.Parameter], data: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds for the steps and the last step's loss."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    start = time.perf_counter()
    loss = torch.tensor(0.0)
    for ids in data:
        logits = step_logits(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start, float(loss.detach())


def run_variant(variant: str, backbone_trained: bool, data: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds and final loss of one way of training (see the module docstring)."""
    student, peft_model, _ = build()  # every variant from the same start
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    if variant == "peft":
        if backbone_trained:
            peft_model.base_model.model.requires_grad_(True)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        return train(lambda ids: peft_model(input_ids=ids, attention_mask=mask).logits, trainable, data)
    student.freeze_backbone(not backbone_trained)
    student.train(variant == "merged")
    trainable = [p for p in student.parameters() if p.requires_grad]
    return train(lambda ids: student.text_logits("math", ids, mask), trainable, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = batches(arguments.steps)
    variants = ("merged", "unmerged", "peft")
    result: dict[str, Any] = {"steps": arguments.steps, "threads": arguments.threads}
    for phase, backbone_trained in (("adapter", False), ("joint", True)):
        best = dict.fromkeys(variants, float("inf"))
        losses: dict[str, float] = {}
        for round_index in range(arguments.rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]  # alternate: no variant always first
            for variant in order:
                seconds, losses[variant] = run_variant(variant, backbone_trained, data)
                best[variant] = min(best[variant], seconds)
        rates = {name: arguments.steps / seconds for name, seconds in best.items()}
        result[phase] = {"steps_per_second": rates, "final_loss": losses,
                         "speedup_of_merged": {name: best[name] / best["merged"] for name in variants[1:]}}
        print(f"{phase} phase: merged {rates['merged']:.2f} steps/s, unmerged {rates['unmerged']:.2f}, PEFT "
              f"{rates['peft']:.2f}: merged is {best['unmerged'] / best['merged']:.2f} x unmerged and "
              f"{best['peft'] / best['merged']:.2f} x PEFT; loss after {arguments.steps} steps "
              + ", ".join(f"{name} {loss:.5f}" for name, loss in losses.items()))
    if arguments.json:
        atomic_write_json(arguments.json, result)


if __name__ == "__main__":
    main()
