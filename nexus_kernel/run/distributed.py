"""One run on several processes, as torchrun starts it: who this process is, and the few
collective steps the stages need, all on `torch.distributed` (no launcher or transport of our own).

`torchrun --nproc-per-node N -m nexus_kernel run ...` sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`LOCAL_WORLD_SIZE` and the rendezvous address for every process; `start` joins the group they
describe: gloo for CPU tensors, and NCCL for CUDA tensors where the run computes on CUDA
(`cpu:gloo,cuda:nccl`, one backend per device type, so the small control messages stay on
gloo). Without `WORLD_SIZE` (or with 1) nothing is started and every helper here is the
single-process identity, so stages call them unconditionally.

Rank 0 is the leader: it owns the run directory (lock, `state.json`, every artifact and
checkpoint); the other ranks compute their shards and wait at barriers. Sharding is
round-robin (`index % size == rank`), so the union of the shards, read in rank order per round,
is the original order; that is what lets the streaming PCA fold its batches in the
single-process order and come out bit for bit the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from nexus_kernel.errors import StageError

T = TypeVar("T")

TIMEOUT_ENV = "NEXUS_DIST_TIMEOUT_MINUTES"
"""How long a rank waits at a collective for the others (default 120 minutes: the leader may
spend that long alone on a stage the others do not take part in, such as validation)."""
_DEFAULT_TIMEOUT_MINUTES = 120.0


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether several processes share the run."""
        return self.size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's round-robin share of `items` (all of them in one process)."""
        return list(items[self.rank :: self.size])

    def owns(self, index: int) -> bool:
        """Whether the item at `index` of a round-robin split is this rank's."""
        return index % self.size == self.rank


class DistributedError(StageError):
    """The process group cannot start (an incomplete or inconsistent torchrun environment), or
    a collective step failed: another rank stopped, or did not arrive within the timeout."""


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _launched_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 2  # not a number: taken as launched, so `start` names the bad value


def _environment_text(name: str) -> str:
    text = os.environ.get(name, "")
    if not text:
        raise DistributedError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but {name} is not set: start the run "
                               f"with torchrun, which sets {', '.join(_TORCHRUN_ENV)}")
    return text


def _environment_int(name: str) -> int:
    text = _environment_text(name)
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not a whole number (torchrun sets it)") from None


def torchrun_environment() -> World:
    """The `World` torchrun describes in the environment, checked: every variable there, whole
    numbers that fit together (a `DistributedError` naming the variable otherwise)."""
    size, rank = _environment_int("WORLD_SIZE"), _environment_int("RANK")
    local_rank, local_size = _environment_int("LOCAL_RANK"), _environment_int("LOCAL_WORLD_SIZE")
    _environment_text("MASTER_ADDR")
    _environment_int("MASTER_PORT")
    if not (0 <= rank < size and 0 <= local_rank < local_size <= size):
        raise DistributedError(f"RANK={rank}, LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE={local_size} do not fit "
                               f"WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size)


def timeout_minutes() -> float:
    """How long a collective waits for the other ranks: `NEXUS_DIST_TIMEOUT_MINUTES`, else 120."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return _DEFAULT_TIMEOUT_MINUTES
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise DistributedError(f"{TIMEOUT_ENV}={text!r}: give the minutes a rank waits for the others, "
                               f"a number above 0 (default {_DEFAULT_TIMEOUT_MINUTES:g})")
    return minutes


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return _launched_size() > 1


def world() -> World:
    """This process's `World`: from the started process group, else the single process
    (without importing torch when torchrun did not start this process)."""
    if _launched_size() <= 1:
        return World()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    size = dist.get_world_size()
    return World(rank=dist.get_rank(), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))


def start(device: str = "auto") -> World:
    """Join the process group torchrun described in the environment (nothing to join when it
    started one process). `device` is `hardware.device`: CUDA tensors use NCCL unless it is
    `cpu`, and each rank then computes on `cuda:<LOCAL_RANK>`."""
    if _launched_size() <= 1:
        return World()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        described = torchrun_environment()
        minutes = timeout_minutes()
        uses_cuda = device != "cpu" and torch.cuda.is_available()
        if uses_cuda:
            if described.local_rank >= torch.cuda.device_count():
                raise DistributedError(f"rank {described.rank} is local rank {described.local_rank}, but this "
                                       f"machine shows {torch.cuda.device_count()} CUDA device(s): start at most "
                                       "that many processes a machine (--nproc-per-node), or set "
                                       "hardware.device = \"cpu\"")
            torch.cuda.set_device(described.local_rank)
        with collective("joining the process group"):
            dist.init_process_group("cpu:gloo,cuda:nccl" if uses_cuda else "gloo", timeout=timedelta(minutes=minutes))
    return world()


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Around one collective step: the backend's error (a rank gone, the timeout passed)
    becomes a `DistributedError` naming this rank and the step, not a traceback of gloo's."""
    try:
        yield
    except RuntimeError as exc:  # torch's DistBackendError and gloo's timeouts are RuntimeErrors
        rank = os.environ.get("RANK", "?")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"rank {rank}: {what} failed: another rank stopped, or did not get there within "
                               f"{timeout_minutes():g} minutes ({TIMEOUT_ENV}); the backend said: {first}") from None


_SETTLE = timedelta(seconds=60)


def stop(settled: bool = True) -> None:
    """Leave the process group (if one was started). `settled`: every rank is on its way out
    too, so wait (at most a minute) until all are, before the connections close: a rank still
    reading the last message when another closes would abort."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if settled:
            try:
                dist.monitored_barrier(timeout=_SETTLE)
            except (RuntimeError, ValueError):  # a rank already gone; or no gloo-only group (NCCL mixed in)
                pass
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if world().active:
        import torch.distributed as dist

        with collective("waiting for the other ranks"):
            dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (JSON-like control data: decisions, summaries)."""
    if not world().active:
        return value
    import torch.distributed as dist

    holder = [value]
    with collective("waiting for word from rank 0"):
        dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[no-any-return]


def gather_in_order(shard: list[T], total: int) -> list[T]:
    """The round-robin shards every rank holds (`World.shard` of a sequence of `total` items),
    put back into the original order, on every rank."""
    here = world()
    if not here.active:
        return list(shard)
    import torch.distributed as dist

    parts: list[Any] = [None] * here.size
    with collective("gathering the ranks' shares"):
        dist.all_gather_object(parts, shard)
    ordered: list[T] = []
    for index in range(total):
        ordered.append(parts[index % here.size][index // here.size])
    return ordered


def all_sum(values: Any) -> Any:
    """The element-wise sum over ranks of the tensor `values` (in place; returned)."""
    if world().active:
        import torch.distributed as dist

        with collective("summing over the ranks"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def first_failure(message: str | None) -> str | None:
    """Every rank's verdict on a check each made alone (None: passed), agreed: the first
    failing rank's message (naming it), or None when all passed. So every rank raises together
    instead of one raising while the others wait in the next collective."""
    here = world()
    if not here.active:
        return message
    import torch.distributed as dist

    verdicts: list[Any] = [None] * here.size
    with collective("comparing the ranks' checks"):
        dist.all_gather_object(verdicts, message)
    for rank, verdict in enumerate(verdicts):
        if verdict is not None:
            return f"{verdict} (rank {rank})"
    return None


def cpu_threads(configured: int) -> int:
    """CPU threads for one rank: the configured count shared among the processes of this
    machine (torchrun starts one thread each; two ranks of two threads on two cores would
    fight over them), at least one."""
    return max(1, configured // world().local_size)


def process_budget(budget_gb: float, device: str) -> float:
    """`hardware.memory_budget_gb` for one process: on a CPU the ranks of this machine share
    its RAM, each with its own teacher, so each plans with an equal part; on CUDA each rank has
    its own GPU and the whole budget."""
    return float(budget_gb) if device.startswith("cuda") else float(budget_gb) / world().local_size
