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


def batches() -> list[np.ndarray]:
    """Seven batches of uneven sizes: three rounds of two ranks, the last with one batch."""
    data = np.random.default_rng(9).normal(size=(700, 12)) @ np.diag(np.linspace(4, 0.2, 12)) - 25.0
    return np.array_split(data, 7)


def fold_worker(rank: int, folder: str) -> None:
    """Stream `batches()` round-robin (rank r takes batches r, r + 2, ...) and fold each round."""
    from nexus_kernel.algorithms.pca import batch_moments, fold_in_rank_order

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous-fold", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        pca = None
        parts = batches()
        for start in range(0, len(parts), WORLD_SIZE):
            index = start + rank
            part = batch_moments(parts[index], 12) if index < len(parts) else None
            pca = fold_in_rank_order(pca, part)
        save_file(pca.state_dict(), str(Path(folder) / f"fold{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
