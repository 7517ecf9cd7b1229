"""Streaming PCA against a dense float64 SVD: random shapes, splits, merge trees, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from nexus_kernel.algorithms.pca import StreamingPCA


def _dense_reference(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample covariance and descending eigenvalues from a float64 SVD of all the data."""
    mean = data.mean(0)
    centred = data - mean
    singular = np.linalg.svd(centred, compute_uv=False)
    eigenvalues = np.zeros(data.shape[1])
    denominator = max(len(data) - 1, 1)
    eigenvalues[: len(singular)] = singular**2 / denominator
    return mean, centred.T @ centred / denominator, eigenvalues


@st.composite
def datasets(draw: st.DrawFn) -> tuple[np.ndarray, list[int]]:
    """Data with a random low-rank structure and random batch boundaries."""
    n = draw(st.integers(1, 120))
    dim = draw(st.integers(1, 24))
    rank = draw(st.integers(1, dim))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    offset = draw(st.sampled_from([0.0, 3.0, -250.0]))
    data = (rng.normal(size=(n, rank)) * rng.uniform(0.5, 5.0, size=rank)) @ rng.normal(size=(rank, dim))
    data += 0.05 * rng.normal(size=(n, dim)) + offset
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return data, cuts


def _split(data: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _assert_matches_dense(pca: StreamingPCA, data: np.ndarray) -> None:
    mean, covariance, eigenvalues = _dense_reference(data)
    result = pca.result()
    scale = max(1.0, float(np.abs(covariance).max()))
    assert result.count == len(data)
    np.testing.assert_allclose(result.mean.numpy(), mean, rtol=1e-9, atol=1e-9 * max(1, abs(mean).max()))
    np.testing.assert_allclose(result.all_eigenvalues.numpy(), eigenvalues, rtol=1e-7, atol=1e-9 * scale)
    components = result.components.numpy()
    rebuilt = components.T @ np.diag(result.eigenvalues.numpy()) @ components
    np.testing.assert_allclose(rebuilt, covariance, rtol=1e-7, atol=1e-9 * scale)
    np.testing.assert_allclose(components @ components.T, np.eye(len(components)), atol=1e-9)


@given(datasets())
def test_matches_dense_svd_for_any_shape_and_split(case: tuple[np.ndarray, list[int]]) -> None:
    data, cuts = case
    pca = StreamingPCA(data.shape[1])
    for part in _split(data, cuts):
        pca.update(part)
    _assert_matches_dense(pca, data)


@given(datasets(), st.randoms(use_true_random=False))
def test_merge_is_order_invariant_for_any_merge_tree(case: tuple[np.ndarray, list[int]], rng) -> None:
    data, cuts = case
    states = [StreamingPCA(data.shape[1]).update(part) for part in _split(data, cuts)]
    while len(states) > 1:  # merge random pairs in random order until one state is left
        i, j = rng.sample(range(len(states)), 2)
        merged = states[i].merge(states[j])
        states = [s for index, s in enumerate(states) if index not in (i, j)] + [merged]
    _assert_matches_dense(states[0], data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_float_dtype_is_accepted(dtype: torch.dtype) -> None:
    data = torch.randn(50, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    pca = StreamingPCA(8).update(data)
    _, covariance, _ = _dense_reference(data.double().numpy())
    tolerance = 1e-9 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(pca.covariance().numpy(), covariance, atol=tolerance * 10, rtol=tolerance)


def test_large_common_offset_loses_no_precision() -> None:
    rng = np.random.default_rng(7)
    data = 1e4 + 0.1 * rng.normal(size=(5000, 6))  # mean 1e4, variance 1e-2
    pca = StreamingPCA(6)
    for part in np.array_split(data, 37):
        pca.update(part)
    _, covariance, eigenvalues = _dense_reference(data)
    np.testing.assert_allclose(pca.covariance().numpy(), covariance, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(pca.result().all_eigenvalues.numpy(), eigenvalues, rtol=1e-9)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_input_precision_does_not_depend_on_the_offset(offset: float) -> None:
    rng = np.random.default_rng(11)
    values = torch.from_numpy(0.1 * rng.normal(size=(5000, 6))).float() + offset
    exact = _dense_reference(values.double().numpy())[1]
    streamed = StreamingPCA(6)
    for part in torch.split(values, 700):
        streamed.update(part)
    relative = np.abs(streamed.covariance().numpy() - exact).max() / np.abs(exact).max()
    assert relative < 1e-4
    as_float64 = StreamingPCA(6, compute_dtype=torch.float64).update(values).covariance().numpy()
    np.testing.assert_allclose(as_float64, exact, rtol=1e-9, atol=1e-15)
    # The uncentred one-pass formula E[xx^T] - mean mean^T would lose everything here:
    naive = (values.T @ values / len(values) - torch.outer(values.mean(0), values.mean(0))).double()
    if offset:
        assert np.abs(naive.numpy() - exact).max() / np.abs(exact).max() > 1.0

def test_one_vector_fewer_vectors_than_dims_and_constant_input() -> None:
    single = StreamingPCA(5).update(np.arange(5.0)[None, :]).result()
    assert single.count == 1 and single.intrinsic_dim() == 0 and single.participation_ratio == 0.0
    assert torch.equal(single.mean, torch.arange(5.0, dtype=torch.float64))
    few = np.random.default_rng(0).normal(size=(3, 10))
    pca = StreamingPCA(10).update(few)
    _assert_matches_dense(pca, few)
    assert pca.result().intrinsic_dim(0.9999) <= 2
    constant = StreamingPCA(4).update(np.full((100, 4), 3.5)).result()
    assert constant.intrinsic_dim() == 0 and constant.participation_ratio == 0.0
    for tensor in (constant.eigenvalues, constant.explained_variance_ratio, constant.components):
        assert bool(torch.isfinite(tensor).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_batch_is_refused_and_state_unchanged(bad: float) -> None:
    pca = StreamingPCA(3).update(np.eye(3))
    before = {name: tensor.clone() for name, tensor in pca.state_dict().items()}
    batch = np.ones((4, 3))
    batch[2, 1] = bad
    with pytest.raises(ValueError, match=r"batch holds NaN or Inf \(first at row 2, column 1\); state unchanged"):
        pca.update(batch)
    assert all(torch.equal(before[name], tensor) for name, tensor in pca.state_dict().items())


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected a batch of shape \[n, 3\], got \[2, 4\]"):
        StreamingPCA(3).update(np.zeros((2, 4)))
    with pytest.raises(TypeError, match="floating-point"):
        StreamingPCA(3).update(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="cannot merge dim 4 into dim 3"):
        StreamingPCA(3).merge(StreamingPCA(4))


def test_state_round_trips_through_safetensors(tmp_path) -> None:
    data = np.random.default_rng(3).normal(size=(64, 7))
    pca = StreamingPCA(7).update(data)
    save_file(pca.state_dict(), tmp_path / "state.safetensors")
    restored = StreamingPCA.from_state_dict(load_file(tmp_path / "state.safetensors"))
    assert restored.count == 64
    assert torch.equal(restored.m2, pca.m2) and torch.equal(restored.mean, pca.mean)
    with pytest.raises(ValueError, match="expected dim 8"):
        StreamingPCA(8).load_state_dict(pca.state_dict())


@settings(max_examples=30)
@given(st.integers(2, 40), st.floats(0.5, 0.999))
def test_intrinsic_dim_is_the_smallest_k_reaching_the_threshold(dim: int, threshold: float) -> None:
    rng = np.random.default_rng(dim)
    data = rng.normal(size=(200, dim)) * np.geomspace(10, 0.1, dim)
    result = StreamingPCA(dim).update(data).result()
    k = result.intrinsic_dim(threshold)
    ratios = result.all_eigenvalues.numpy() / result.total_variance
    assert ratios[:k].sum() >= threshold - 1e-12
    assert k == 1 or ratios[: k - 1].sum() < threshold
    eigenvalues = result.all_eigenvalues.numpy()
    assert result.participation_ratio == pytest.approx(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())


def test_two_process_gloo_all_reduce_equals_the_single_process_state(tmp_path) -> None:
    import pca_workers
    import torch.multiprocessing as mp

    mp.spawn(pca_workers.all_reduce_worker, args=(str(tmp_path),), nprocs=pca_workers.WORLD_SIZE)
    single = pca_workers.stream(0).merge(pca_workers.stream(1))
    for rank in range(pca_workers.WORLD_SIZE):
        reduced = load_file(tmp_path / f"rank{rank}.safetensors")
        assert int(reduced["count"]) == 1000
        assert torch.equal(reduced["mean"], single.mean)
        assert torch.equal(reduced["m2"], single.m2)
    sequential = StreamingPCA(12).update(np.concatenate([pca_workers.shard(0), pca_workers.shard(1)]))
    np.testing.assert_allclose(single.m2.numpy(), sequential.m2.numpy(), rtol=1e-11)


def test_batch_moments_folded_with_add_are_the_whole_data_moments() -> None:
    """`batch_moments` of each part and `add` (Chan's update) against numpy's float64 moments
    of all the rows at once, computed independently of the streaming code."""
    from nexus_kernel.algorithms.pca import batch_moments

    data = np.random.default_rng(3).normal(size=(300, 9)) * np.linspace(5, 0.2, 9) + 7.0
    parts = np.array_split(data.astype(np.float32), [40, 41, 170])  # uneven, one of a single row
    added = StreamingPCA(9)
    for part in parts:
        count, mean, m2 = batch_moments(part, 9)
        assert count == len(part) and mean.dtype == m2.dtype == torch.float64 and mean.device.type == "cpu"
        part64 = part.astype(np.float64)
        np.testing.assert_allclose(mean.numpy(), part64.mean(axis=0), rtol=1e-6)
        centred = part64 - part64.mean(axis=0)
        np.testing.assert_allclose(m2.numpy(), centred.T @ centred, rtol=1e-5, atol=1e-6)
        added.add(count, mean, m2)
    whole = data.astype(np.float32).astype(np.float64)
    centred = whole - whole.mean(axis=0)
    assert added.count == 300
    np.testing.assert_allclose(added.mean.numpy(), whole.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(added.m2.numpy(), centred.T @ centred, rtol=1e-5, atol=1e-4)
    assert batch_moments(data[:0], 9)[0] == 0
    assert added.add(0, torch.zeros(9, dtype=torch.float64), torch.zeros(9, 9, dtype=torch.float64)).count == 300


def test_two_processes_folding_round_robin_batches_equal_one_process_streaming_them(tmp_path) -> None:
    import pca_workers
    import torch.multiprocessing as mp

    mp.spawn(pca_workers.fold_worker, args=(str(tmp_path),), nprocs=pca_workers.WORLD_SIZE)
    torch.set_num_threads(1)
    single = StreamingPCA(12)
    for part in pca_workers.batches():
        single.update(part)
    for rank in range(pca_workers.WORLD_SIZE):
        folded = load_file(tmp_path / f"fold{rank}.safetensors")
        assert int(folded["count"]) == single.count == 700
        assert torch.equal(folded["mean"], single.mean)  # bit for bit, not merely close
        assert torch.equal(folded["m2"], single.m2)
