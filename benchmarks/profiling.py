"""Profiling throughput against a plain teacher forward, same samples, one run.

The teacher is the math demo teacher's architecture (LLaMA-style, `SMALL_DECODER`; the folder
under `models/` when built, else an untrained copy: throughput does not depend on the weights),
loaded through the kernel like stage 2 does. Batches are tokenised once up front; then, in
alternating rounds, the same batches go through (a) a plain forward with the task loss and
(b) `profile_layers` on every decoder block (forward hooks feeding StreamingPCA). The best
round of each gives samples/s and the ratio (target >= 0.8).

    python benchmarks/profiling.py [--samples 2048] [--batch 64] [--quantization nf4] [--json f.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nexus_kernel.algorithms.profiling import profile_layers
from nexus_kernel.kit.testing import tiny_causal_teacher
from nexus_kernel.run.fsio import atomic_write_json
from nexus_kernel.teachers.loading import load_teacher_folder

REPO = Path(__file__).resolve().parents[1]


def _teacher_folder(scratch: Path) -> Path:
    built = REPO / "models" / "nexus-demo-math"
    if (built / "config.json").is_file():
        return built
    from nexus_cap_math.data import TEMPLATE_WORDS
    from nexus_cap_math.teacher import MODEL
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    folder = tiny_causal_teacher(scratch / "math", TEMPLATE_WORDS)
    vocab = AutoConfig.from_pretrained(folder).vocab_size
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **MODEL)).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quantization", default="nf4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from nexus_cap_math import teacher as math_teacher

    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_teacher_folder("bench", _teacher_folder(Path(scratch)), args.quantization)
        plan = math_teacher.probe_plan(loaded, 4, {"train": "synthetic:gsm8k-words-v1"})
        batches = list(plan.stream(args.samples, args.batch))
        layers = list(plan.candidate_layers)
        plain_best = profiled_best = float("inf")
        for _ in range(args.rounds):
            started = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    plan.loss(loaded.model, batch)
            plain_best = min(plain_best, time.perf_counter() - started)
            started = time.perf_counter()
            states = profile_layers(loaded.model, layers, batches, plan.loss, plan.mask_of)
            profiled_best = min(profiled_best, time.perf_counter() - started)
    figures = {
        "teacher_quantization": loaded.quantization, "layers": layers, "samples": args.samples,
        "batch": args.batch, "vectors_per_layer": states[layers[0]].count,
        "plain_samples_per_s": args.samples / plain_best,
        "profiling_samples_per_s": args.samples / profiled_best,
        "ratio": plain_best / profiled_best,
    }
    print(f"teacher {loaded.quantization}, {len(layers)} hooked layers, {args.samples} samples of "
          f"{args.batch}: plain forward {figures['plain_samples_per_s']:,.0f} samples/s, profiling "
          f"{figures['profiling_samples_per_s']:,.0f} samples/s, ratio {figures['ratio']:.2f} (target >= 0.8)")
    if args.json:
        atomic_write_json(args.json, figures)


if __name__ == "__main__":
    main()
