"""Streaming PCA: exact, mergeable, bounded memory. Raw data is never kept past its batch.

The state is the count, the mean and the centred second moment `M2 = sum((x - mean)(x - mean)^T)`,
all in float64, so memory is O(dim^2) whatever the number of vectors. Two states merge exactly
with Chan et al.'s parallel formula, written in its k-way form: each part contributes
`M2_i + n_i (mean_i - mean)(mean_i - mean)^T` around the joint mean. `merge` and the distributed
`all_reduce` share that arithmetic, so a 2-process all-reduce gives bit for bit the
single-process merge; `update` uses the equivalent pairwise form in place, which is faster.

Per batch, the data are centred around the batch mean (computed with float64 accumulation) and
the Gram matrix is taken in float32 for float16/bfloat16/float32 input (float64 for float64
input), in symmetric blocks, so a large common offset loses no precision and the GEMM runs at
the machine's float32 rate. The batch's moments are computed where the batch is (a CUDA
teacher's activations stay on the GPU: float32 or TF32 GEMM there, float64 moments), and only
the `dim`-vector and the `dim x dim` moment come to the CPU state.

Under torchrun, `fold_in_rank_order` gathers each rank's batch moments of one round and folds
them in rank order with `add`, the very update a single process applies batch after batch:
with round-robin batches the state is bit for bit the single-process one (same threads per
process), at the cost of moving `world size` moments of `dim x dim` float64 per round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import torch.distributed as dist

_BLOCK_WIDTH = 256  # Gram blocks narrower than this run below the GEMM rate


@dataclass(frozen=True)
class PCAResult:
    """The eigendecomposition of a streaming state, largest component first.

    `components` is `[k, dim]` (rows are unit vectors, sign fixed so the largest-magnitude
    entry is positive); `eigenvalues` and `explained_variance_ratio` are `[k]`;
    `all_eigenvalues` keeps every eigenvalue for `intrinsic_dim`. Variances use the sample
    (n - 1) normalisation, as scikit-learn's PCA does.
    """

    count: int
    mean: torch.Tensor
    components: torch.Tensor
    eigenvalues: torch.Tensor
    explained_variance_ratio: torch.Tensor
    all_eigenvalues: torch.Tensor

    @property
    def total_variance(self) -> float:
        return float(self.all_eigenvalues.sum())

    def intrinsic_dim(self, threshold: float = 0.95) -> int:
        """Smallest k whose top-k components explain at least `threshold` of the variance;
        0 when there is no variance at all (constant input)."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        total = self.total_variance
        if total <= 0.0:
            return 0
        cumulative = torch.cumsum(self.all_eigenvalues, 0) / total
        reached = torch.nonzero(cumulative >= threshold - 1e-12)
        return int(reached[0]) + 1 if len(reached) else len(cumulative)

    @property
    def participation_ratio(self) -> float:
        """`(sum λ)^2 / sum λ^2`: an effective dimension; 0 for constant input."""
        squares = float((self.all_eigenvalues**2).sum())
        return self.total_variance**2 / squares if squares > 0.0 else 0.0


def _as_tensor(batch: Any, dim: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(batch)) if not isinstance(batch, torch.Tensor) else batch
    tensor = tensor.detach()
    if tensor.ndim != 2 or tensor.shape[1] != dim:
        raise ValueError(f"expected a batch of shape [n, {dim}], got {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(f"expected a floating-point batch, got {tensor.dtype}")
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        row, column = (int(i) for i in torch.nonzero(~finite)[0])
        raise ValueError(
            f"batch holds NaN or Inf (first at row {row}, column {column}); state unchanged"
        )
    return tensor


def _symmetric_gram(centred: torch.Tensor) -> torch.Tensor:
    """`centred.T @ centred`, computing only the blocks on and above the diagonal."""
    dim = centred.shape[1]
    blocks = max(1, min(4, dim // _BLOCK_WIDTH))
    if blocks == 1:
        return centred.T @ centred
    edges = [round(i * dim / blocks) for i in range(blocks + 1)]
    gram = torch.empty(dim, dim, dtype=centred.dtype, device=centred.device)
    for i in range(blocks):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i, blocks):
            cols = slice(edges[j], edges[j + 1])
            block = centred[:, rows].T @ centred[:, cols]
            gram[rows, cols] = block
            if j != i:
                gram[cols, rows] = block.T
    return gram


def _batch_moments(
    batch: torch.Tensor, compute: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and centred second moment of one batch, both float64 and on the CPU, computed on
    the batch's device. The Gram matrix is taken in `compute` (default: float64 for float64
    input, float32 otherwise)."""
    if compute is None:
        compute = torch.float64 if batch.dtype == torch.float64 else torch.float32
    values = batch.to(compute)
    shift = values.mean(0, dtype=torch.float64).to(compute)
    centred = values - shift
    # The shift was rounded to `compute`; correct for the small residual mean exactly.
    residual = centred.mean(0, dtype=torch.float64)
    m2 = _symmetric_gram(centred).to(torch.float64).addr_(residual, residual, alpha=-len(batch))
    return (shift.to(torch.float64) + residual).cpu(), m2.cpu()


def batch_moments(batch: Any, dim: int, compute: torch.dtype | None = None) -> tuple[int, torch.Tensor, torch.Tensor]:
    """`(count, mean, m2)` of one batch `[n, dim]`, checked as `StreamingPCA.update` checks it;
    what `StreamingPCA.add` folds in."""
    tensor = _as_tensor(batch, dim)
    if not len(tensor):
        return 0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)
    mean, m2 = _batch_moments(tensor, compute)
    return len(tensor), mean, m2


class StreamingPCA:
    """Principal components of a stream of `dim`-dimensional vectors, in O(dim^2) memory.

    `compute_dtype` forces the dtype of each batch's Gram matrix; by default float64 input is
    computed in float64 and other inputs in float32 (relative error about 1e-5 of a variance,
    at the float32 GEMM rate). Accumulation across batches is always float64.
    """

    def __init__(self, dim: int, compute_dtype: torch.dtype | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.compute_dtype = compute_dtype
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)

    def _absorb(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Merge the part `(count, mean, m2)` into this state with the k-way form of Chan's
        formula, the same arithmetic as `all_reduce`, so both give identical bits."""
        if count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            return
        total = self.count + count
        joint_mean = (self.mean * self.count + mean * count) / total
        mine, theirs = self.mean - joint_mean, mean - joint_mean
        self.m2 = (self.m2 + self.count * torch.outer(mine, mine)) + (m2 + count * torch.outer(theirs, theirs))
        self.count, self.mean = total, joint_mean

    def update(self, batch: Any) -> StreamingPCA:
        """Add a batch `[n, dim]` (torch tensor or numpy array, any float dtype). A batch with
        NaN or Inf raises `ValueError` and leaves the state unchanged. Returns self."""
        return self.add(*batch_moments(batch, self.dim, self.compute_dtype))

    def add(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> StreamingPCA:
        """Fold in one batch's `batch_moments` (what `update` does after computing them).
        Returns self."""
        if count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean, m2
            return self
        # Chan's pairwise update, in place: the hot path, a few passes over the d x d state.
        total = self.count + count
        delta = mean - self.mean
        self.m2.add_(m2).addr_(delta, delta, alpha=self.count * count / total)
        self.mean.add_(delta, alpha=count / total)
        self.count = total
        return self

    def merge(self, other: StreamingPCA) -> StreamingPCA:
        """Fold `other`'s state into this one; the result equals having seen both streams."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        self._absorb(other.count, other.mean, other.m2)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, ready for `safetensors.torch.save_file`."""
        return {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "mean": self.mean.clone(),
            "m2": self.m2.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> StreamingPCA:
        """Restore a state saved by `state_dict`; shapes and values are checked first."""
        missing = {"count", "mean", "m2"} - state.keys()
        if missing:
            raise KeyError(f"PCA state lacks {', '.join(sorted(missing))}")
        count, mean, m2 = int(state["count"].reshape(-1)[0]), state["mean"], state["m2"]
        if tuple(mean.shape) != (self.dim,) or tuple(m2.shape) != (self.dim, self.dim):
            raise ValueError(
                f"PCA state has mean {list(mean.shape)} and m2 {list(m2.shape)}; expected dim {self.dim}"
            )
        if count < 0 or not bool(torch.isfinite(mean).all() and torch.isfinite(m2).all()):
            raise ValueError("PCA state holds a negative count or non-finite values")
        self.count, self.mean, self.m2 = count, mean.to(torch.float64).clone(), m2.to(torch.float64).clone()
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> StreamingPCA:
        return cls(int(state["mean"].shape[0])).load_state_dict(state)

    def covariance(self) -> torch.Tensor:
        """Sample covariance (n - 1 normalisation; zero for fewer than two vectors)."""
        if self.count < 2:
            return torch.zeros_like(self.m2)
        return self.m2 / (self.count - 1)

    def result(self, k: int | None = None) -> PCAResult:
        """Eigendecomposition of the covariance: the top `k` components (all when None)."""
        k = self.dim if k is None else k
        if not 0 <= k <= self.dim:
            raise ValueError(f"k must be in [0, {self.dim}], got {k}")
        covariance = self.covariance()
        covariance = (covariance + covariance.T) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.flip(0).clamp_min(0.0)
        components = eigenvectors.flip(1).T.contiguous()
        strongest = components.abs().argmax(dim=1)
        signs = torch.sign(components[torch.arange(self.dim), strongest])
        components = components * torch.where(signs == 0, 1.0, signs).unsqueeze(1)
        total = eigenvalues.sum()
        ratio = eigenvalues / total if total > 0 else torch.zeros_like(eigenvalues)
        return PCAResult(
            count=self.count,
            mean=self.mean.clone(),
            components=components[:k],
            eigenvalues=eigenvalues[:k],
            explained_variance_ratio=ratio[:k],
            all_eigenvalues=eigenvalues,
        )


def all_reduce(pca: StreamingPCA, group: dist.ProcessGroup | None = None) -> StreamingPCA:
    """Combine the states of every process in `group` (in place); afterwards each process holds
    the state of the union of all streams. Works with the gloo backend on CPU."""
    import torch.distributed as dist

    count = torch.tensor([float(pca.count)], dtype=torch.float64)
    dist.all_reduce(count, group=group)
    total = int(count.item())
    if total == 0:
        return pca
    weighted = pca.mean * pca.count
    dist.all_reduce(weighted, group=group)
    joint_mean = weighted / total
    offset = pca.mean - joint_mean
    m2 = pca.m2 + pca.count * torch.outer(offset, offset)
    dist.all_reduce(m2, group=group)
    pca.count, pca.mean, pca.m2 = total, joint_mean, m2
    return pca


def fold_in_rank_order(pca: StreamingPCA | None, part: tuple[int, torch.Tensor, torch.Tensor] | None,
                       group: dist.ProcessGroup | None = None) -> StreamingPCA | None:
    """One round of a round-robin stream over the ranks of `group`: each rank gives the
    `batch_moments` of its batch of the round (`part`; None when it had none) and every rank
    folds all of them into its `pca` in rank order, which is batch order. A rank whose `pca`
    is None (it has seen no batch yet) gets a new state of the width the others report.
    Returns the state (None only while no rank has seen a batch)."""
    import torch.distributed as dist

    size = dist.get_world_size(group)
    count, mean, m2 = part if part is not None else (0, None, None)
    width = pca.dim if pca is not None else (int(mean.numel()) if mean is not None else 0)
    meta = [torch.zeros(2, dtype=torch.int64) for _ in range(size)]
    dist.all_gather(meta, torch.tensor([count, width], dtype=torch.int64), group=group)
    dim = max(int(entry[1]) for entry in meta)
    if dim == 0:
        return pca
    if mean is None or m2 is None:
        mean, m2 = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64)
    means = [torch.empty(dim, dtype=torch.float64) for _ in range(size)]
    moments = [torch.empty(dim, dim, dtype=torch.float64) for _ in range(size)]
    dist.all_gather(means, mean.contiguous(), group=group)
    dist.all_gather(moments, m2.contiguous(), group=group)
    state = pca if pca is not None else StreamingPCA(dim)
    for entry, rank_mean, rank_m2 in zip(meta, means, moments, strict=True):
        state.add(int(entry[0]), rank_mean, rank_m2)
    return state
