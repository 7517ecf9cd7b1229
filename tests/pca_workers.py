"""Worker for the 2-process gloo test (a module of its own so spawned processes can import it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from nexus_kernel.algorithms.pca import StreamingPCA, all_reduce

WORLD_SIZE = 2


def shard(rank: int) -> np.ndarray:
    """The rows process `rank` sees: a fixed, uneven split of one seeded data set."""
    data = np.random.default_rng(5).normal(size=(1000, 12)) @ np.diag(np.linspace(3, 0.1, 12)) + 40.0
    return data[:370] if rank == 0 else data[370:]


def stream(rank: int) -> StreamingPCA:
    pca = StreamingPCA(12)
    for part in np.array_split(shard(rank), 5):
        pca.update(part)
    return pca


def all_reduce_worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        pca = all_reduce(stream(rank))
        save_file(pca.state_dict(), str(Path(folder) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
