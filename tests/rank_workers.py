"""Workers for the tests of `nexus_kernel.run.distributed` on two gloo processes (a module of
its own so that spawned processes can import it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

WORLD_SIZE = 2
TIMEOUT_MINUTES = "0.05"
"""Three seconds: how long the waiting rank waits for the leader, who sleeps longer."""
LEADER_SLEEP = 8.0


def as_torchrun_would(rank: int, port: int) -> None:
    """The environment torchrun gives process `rank` of two on this machine."""
    os.environ.update({"WORLD_SIZE": str(WORLD_SIZE), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "NEXUS_DIST_TIMEOUT_MINUTES": TIMEOUT_MINUTES})


def waiting_past_the_timeout(rank: int, port: int, folder: str) -> None:
    """Rank 1 waits for word from rank 0, which is busy past the timeout; rank 1 writes the
    error it got (or that it got none)."""
    import torch

    from nexus_kernel.errors import NexusError
    from nexus_kernel.run import distributed

    as_torchrun_would(rank, port)
    torch.set_num_threads(1)
    distributed.start("cpu")
    try:
        if rank == 0:
            time.sleep(LEADER_SLEEP)
            return
        try:
            distributed.broadcast(None)
            outcome = "no error"
        except NexusError as exc:
            outcome = f"{type(exc).__name__}|{exc.exit_code}|{exc}"
        Path(folder, "outcome.txt").write_text(outcome)
    finally:
        distributed.stop(settled=False)
