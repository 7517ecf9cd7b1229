"""Nexus's low-rank deltas (forward hooks on the backbone's linears) against PEFT's LoRA layers,
training the same adapter on the same batches, in one run: steps per second and the loss.

The student is the default stage-3 shape (LLaMA-style, `[student]` defaults, the demo's
vocabulary size) with one adapter of rank 21 on every linear of its decoder blocks (the demo
math adapter's shape). (a) Nexus: `NexusStudent` + `CapabilityAdapter`, `text_logits` with the
adapter active. (b) PEFT: `get_peft_model` with `LoraConfig(r=21, lora_alpha=21, targets by full
name)`, its `lora_A`/`lora_B` set to the same initial weights (`up` = `lora_B` starts non-zero
here, so the two start from the same non-trivial adapter). Both train the adapter only, with
cross-entropy on the same random batches and AdamW. Rounds alternate; the best of each gives
steps/s and the ratio PEFT / Nexus; the loss after the last step says whether they train the
same function (float differences only).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = batches(arguments.steps)
    best = {"nexus": float("inf"), "peft": float("inf")}
    losses: dict[str, float] = {}
    for _ in range(arguments.rounds):
        student, peft_model, _ = build()  # both from the same start in every round
        mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
        seconds, losses["nexus"] = train(lambda ids: student.text_logits("math", ids, mask),
                                         list(student.adapters.parameters()), data)
        best["nexus"] = min(best["nexus"], seconds)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        seconds, losses["peft"] = train(lambda ids: peft_model(input_ids=ids, attention_mask=mask).logits,
                                        trainable, data)
        best["peft"] = min(best["peft"], seconds)
    result = {"steps": arguments.steps, "threads": arguments.threads,
              "steps_per_second": {name: arguments.steps / seconds for name, seconds in best.items()},
              "ratio_peft_to_nexus": best["nexus"] / best["peft"], "final_loss": losses,
              "final_loss_relative_difference": abs(losses["peft"] - losses["nexus"]) / abs(losses["nexus"])}
    print(f"nexus hooks {result['steps_per_second']['nexus']:.2f} steps/s, PEFT LoRA "
          f"{result['steps_per_second']['peft']:.2f} steps/s: ratio PEFT/Nexus {result['ratio_peft_to_nexus']:.3f}; "
          f"loss after {arguments.steps} steps {losses['nexus']:.5f} vs {losses['peft']:.5f} "
          f"(relative difference {result['final_loss_relative_difference']:.2e})")
    if arguments.json:
        atomic_write_json(arguments.json, result)


if __name__ == "__main__":
    main()
