"""A distillation training step of the framework against a minimal hand-written PyTorch loop:
same student, adapter and batch, one run.

The student is the default stage-3 shape (LLaMA-style backbone from `[student]` defaults, the
kernel tokenizer over the math words) with a math adapter (rank 21, two anchored blocks, as
the demo math teacher profiles). The batch is 32 math problems with their worked answers and
random per-token anchor targets. (a) The hand-written loop: forward with the adapter active,
cross-entropy plus `alpha` times the per-token anchor MSE, backward, clipping, AdamW. (b) The framework:
`RecoveringTrainer` with its default checkpointing, reconstruction checks, spike detection
and `training.jsonl`, around `task_loss` with the plugin's `anchor_loss` asked through the
plugin manager, as stage 4 runs it. Rounds alternate; the best of each gives steps/s and the
ratio (target >= 0.9).

    python benchmarks/distill.py [--steps 200] [--rounds 3] [--threads 1] [--json f.json]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from nexus_kernel.run.fsio import atomic_write_json

ALPHA = 0.1
RANK = 21
BATCH = 32


def build() -> tuple[object, object, object, object]:
    """The student with its math adapter, the stage-4 task and one fixed batch."""
    from nexus_cap_math import student as math_student
    from nexus_cap_math.data import TEMPLATE_WORDS
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.config import SCHEMA
    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.plugins import load_plugins
    from nexus_kernel.stages.distill import CapabilityTask
    from nexus_kernel.stages.distill_pool import Pool
    from nexus_kernel.student.decoding import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
    from nexus_kernel.student.model import (
        CapabilityAdapter,
        NexusStudent,
        default_targets,
        linear_targets,
    )

    torch.manual_seed(0)
    shape = {key: item.default for key, item in SCHEMA["student"].items()}
    tokenizer = build_tokenizer(TEMPLATE_WORDS)
    backbone = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape["hidden_size"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], intermediate_size=shape["intermediate_size"],
        max_position_embeddings=shape["max_positions"], bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID))
    student = NexusStudent(backbone, tokenizer)
    spec = AdapterSpec("math", RANK, shape["hidden_size"], linear_targets(backbone, default_targets(backbone)),
                       anchored_layers=(1, 3))
    student.add_adapter("math", CapabilityAdapter(spec))
    student.freeze_backbone()
    datasets = {"train": "synthetic:gsm8k-words-v1", "test": "synthetic:gsm8k-words-v1"}
    plan = math_student.distill_plan(None, student, datasets)
    items = list(itertools.islice(plan.items(), 256))
    outputs = [" " + problem.answer for problem in items]
    # Per-token anchor targets, as stage 4 has for math (teacher and student tokens line up).
    lengths = plan.student_batch(items, outputs).attention_mask.sum(dim=1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(dim=0)])
    tokens = {k: (torch.randn(int(offsets[-1]), RANK), offsets) for k in range(2)}
    pool = Pool(items, outputs, torch.randn(len(items), 2, RANK), torch.ones(2, RANK), {}, "sequence", None, tokens)
    plugins = load_plugins(frozenset({"math"}))
    task = CapabilityTask("math", plugins.capabilities()["math"][0], plan, pool, 0, alpha_scale=1.0)
    batch = task.batch(0, BATCH)
    return student, task, batch, plugins


def hand_written(student: object, batch: object, steps: int) -> float:
    """Seconds for `steps` steps of the plain loop."""
    from nexus_kernel.student.decoding import IGNORE_INDEX

    adapter = student.adapters["math"]  # type: ignore[attr-defined]
    parameters = [p for p in adapter.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.0)
    started = time.perf_counter()
    for _ in range(steps):
        output = student("math", batch)  # type: ignore[operator]
        loss = nn.functional.cross_entropy(output.logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(),  # type: ignore[attr-defined]
                                           ignore_index=IGNORE_INDEX)
        real = batch.attention_mask.bool()  # type: ignore[attr-defined]
        anchor = torch.stack([nn.functional.mse_loss(adapter.anchors[str(i)](output.text_hidden[layer][real]),
                                                     batch.token_anchor[i][real])  # type: ignore[attr-defined]
                              for i, layer in enumerate(adapter.spec.anchored_layers)]).mean()
        loss = loss + ALPHA * anchor
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
    return time.perf_counter() - started


def framework(student: object, task: object, batch: object, plugins: object, steps: int, scratch: Path) -> float:
    """Seconds for `steps` steps of `RecoveringTrainer` as stage 4 runs it."""
    import shutil

    from nexus_kernel.algorithms.recovery import (
        Journal,
        RecoveringTrainer,
        RecoverySettings,
        named_trainable,
    )
    from nexus_kernel.run.runner import RunContext
    from nexus_kernel.stages.distill import (
        plugin_anchor_loss,
        reconstruction,
        task_loss,
    )

    shutil.rmtree(scratch, ignore_errors=True)
    context = RunContext(scratch, None, plugins)  # type: ignore[arg-type]
    override = plugin_anchor_loss(context)
    parameters = named_trainable([("adapters.math", student.adapters["math"])])  # type: ignore[attr-defined]
    trainer = RecoveringTrainer(
        student, parameters, lambda step, alpha, extra: task_loss(student, task, batch, alpha, override),  # type: ignore[arg-type]
        steps, 1e-3, scratch / "checkpoints", Journal(scratch / "training.jsonl", "bench"), RecoverySettings(),
        ALPHA, check=lambda: reconstruction(student, task))  # type: ignore[arg-type]
    started = time.perf_counter()
    trainer.run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        student, task, batch, plugins = build()
        plain_best = framework_best = float("inf")
        for round_index in range(args.rounds):
            plain_best = min(plain_best, hand_written(student, batch, args.steps))
            framework_best = min(framework_best, framework(student, task, batch, plugins, args.steps,
                                                           Path(scratch) / f"run{round_index}"))
    figures = {"steps": args.steps, "batch": BATCH, "rank": RANK, "threads": args.threads,
               "hand_written_steps_per_s": args.steps / plain_best,
               "framework_steps_per_s": args.steps / framework_best, "ratio": plain_best / framework_best}
    print(f"math adapter rank {RANK}, batch {BATCH}, {args.steps} steps: hand-written loop "
          f"{figures['hand_written_steps_per_s']:.2f} steps/s, framework {figures['framework_steps_per_s']:.2f} "
          f"steps/s, ratio {figures['ratio']:.2f} (target >= 0.9)")
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()
