"""Distillation steps per second on one process against two under torchrun, in one run.

The step is stage 4's: the default student with its math adapter and a global batch of 32
math problems (`benchmarks/distill.py`'s `build`), `task_loss` with the loss scaled to the
whole batch, backward, AdamW. (a) One process with `--threads` threads (default: every core).
(b) `torchrun --standalone --nproc-per-node N` with the threads shared among the ranks, each
rank a round-robin share of every batch, under DistributedDataParallel (gloo), as
`nexus run --nproc N` trains. (c) One process with one rank's threads: what the ranks would
do alone, so (b) over (c) is the scaling of sharding itself. Each configuration runs
`--rounds` times, alternating; the best round of each gives steps/s, and the headline ratio is
(b) over (a). Timing starts after warm-up steps,
inside the workers, so process start and imports are not counted.

    python benchmarks/distributed.py [--steps 40] [--rounds 2] [--processes 2] [--json f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 3


def worker(steps: int, threads: int, out: Path) -> None:
    """Time `steps` training steps here (one rank of a torchrun group, or alone)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from distill import ALPHA, BATCH, build  # type: ignore[import-not-found]

    from nexus_kernel.algorithms.recovery import named_trainable
    from nexus_kernel.run import distributed
    from nexus_kernel.stages.distill import data_parallel, task_loss

    here = distributed.start("cpu")
    torch.set_num_threads(threads)
    student, task, _, _ = build()
    student.train()
    parameters = named_trainable([("adapters.math", student.adapters["math"])])
    optimiser = torch.optim.AdamW(list(parameters.values()), lr=1e-3)

    def step_loss(step: int, alpha: float, extra: dict) -> tuple[torch.Tensor, dict]:
        return task_loss(student, task, task.batch(step, BATCH), alpha)

    trained = data_parallel(student, step_loss, find_unused=False) if here.active else step_loss

    def one(step: int) -> None:
        loss, _ = trained(step, ALPHA, {})
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for step in range(WARMUP):
        one(step)
    distributed.barrier()
    started = time.perf_counter()
    for step in range(WARMUP, WARMUP + steps):
        one(step)
    distributed.barrier()
    seconds = time.perf_counter() - started
    if here.main:
        out.write_text(json.dumps({"processes": here.size, "threads": threads, "steps": steps,
                                   "seconds": seconds, "steps_per_second": steps / seconds}))
    distributed.stop()


def measure(processes: int, steps: int, threads: int) -> dict:
    """One round: a fresh launch of `processes` workers; returns rank 0's result."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        arguments = [__file__, "--worker", "--steps", str(steps), "--threads", str(threads), "--out", str(out)]
        launcher = ([sys.executable, *arguments] if processes == 1 else
                    [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={processes}", *arguments])
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(launcher, check=True, env=environment, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the one process; the ranks share them")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.steps, options.threads, options.out)
        return
    per_rank = max(1, options.threads // options.processes)
    single, several, narrow = [], [], []
    for _ in range(options.rounds):
        single.append(measure(1, options.steps, options.threads))
        several.append(measure(options.processes, options.steps, per_rank))
        narrow.append(measure(1, options.steps, per_rank))
    best = {name: max(results, key=lambda result: result["steps_per_second"])["steps_per_second"]
            for name, results in (("single", single), ("several", several), ("narrow", narrow))}
    ratio, scaling = best["several"] / best["single"], best["several"] / best["narrow"]
    print(f"(a) 1 process x {options.threads} threads: {best['single']:.2f} steps/s")
    print(f"(b) {options.processes} processes x {per_rank} threads: {best['several']:.2f} steps/s")
    print(f"(c) 1 process x {per_rank} threads: {best['narrow']:.2f} steps/s")
    print(f"ratio (b)/(a) {options.processes} processes / 1: {ratio:.3f}; sharding (b)/(c): {scaling:.3f} "
          f"(global batch 32, {os.cpu_count()} cores)")
    if options.json is not None:
        from nexus_kernel.run.fsio import atomic_write_json

        atomic_write_json(options.json, {"single": single, "several": several, "narrow": narrow, "ratio": ratio,
                                         "sharding": scaling})


if __name__ == "__main__":
    main()
