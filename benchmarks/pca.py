"""Streaming PCA against scikit-learn's IncrementalPCA and the machine's float32 GEMM rate.

For each dimension d, on one data set with a planted rank-40 structure plus noise, in one run:
- throughput (vectors/s) of StreamingPCA and of IncrementalPCA(n_components=64), same batches;
- the max principal angle of each one's top-40 components against a dense float64 SVD;
- the float32 GEMM rate of this machine (multiply-adds/s of `batch.T @ batch`) and the fraction
  of it StreamingPCA reaches, counting n*d^2 multiply-adds;
- where a CUDA device is there (`--device`, default: the first one), the same stream with the
  batches already on the device (as a CUDA teacher's activations are: the Gram runs there and
  only the d x d moment comes back), its angle, the device's GEMM rate and its speed-up over
  the CPU stream;
and once, the peak RSS of streaming N and 10*N vectors (each in a fresh process).

    python benchmarks/pca.py [--dims 256 1024 2048] [--n 200000] [--device cuda] [--json figures.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nexus_kernel.algorithms.pca import StreamingPCA
from nexus_kernel.run.fsio import atomic_write_json

RANK = 40
COMPONENTS = 64


def planted_batches(n: int, dim: int, batch: int, seed: int = 0):
    """Rank-40 signal (scales 10 down to 1) on a random orthonormal basis, plus noise 0.1."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, RANK)))[0].T.astype(np.float32)
    scales = np.geomspace(10.0, 1.0, RANK).astype(np.float32)
    offset = rng.normal(size=dim).astype(np.float32)
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        signal = rng.standard_normal((rows, RANK), dtype=np.float32) * scales
        yield signal @ basis + 0.1 * rng.standard_normal((rows, dim), dtype=np.float32) + offset


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def gemm_rate(dim: int, batch: int, seconds: float = 1.5, device: str = "cpu") -> float:
    """Multiply-adds per second of a float32 `[batch, dim].T @ [batch, dim]` product on `device`."""
    a = torch.randn(batch, dim, device=device)
    a.T @ a
    _synchronise(device)
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a.T @ a
        calls += 1
    _synchronise(device)
    return calls * batch * dim * dim / (time.perf_counter() - began)


def device_stream(data: np.ndarray, dim: int, batch: int, device: str, reference: np.ndarray) -> dict[str, float]:
    """StreamingPCA over batches already on `device`: vectors/s, angle, the device's GEMM rate."""
    parts = [torch.from_numpy(data[start:start + batch]).to(device) for start in range(0, len(data), batch)]
    StreamingPCA(dim).update(parts[0])  # warm-up (kernels, allocator)
    _synchronise(device)
    pca = StreamingPCA(dim)
    began = time.perf_counter()
    for part in parts:
        pca.update(part)
    _synchronise(device)
    seconds = time.perf_counter() - began
    rate = gemm_rate(dim, batch, device=device)
    return {"device": device, "device_vectors_per_s": len(data) / seconds,
            "device_max_angle_deg": max_angle_degrees(pca.result(RANK).components.numpy(), reference),
            "device_gemm_mac_per_s": rate, "device_fraction_of_gemm": len(data) / seconds * dim * dim / rate}


def max_angle_degrees(components: np.ndarray, reference: np.ndarray) -> float:
    """Largest principal angle between the row spaces of two [k, d] orthonormal bases."""
    q = np.linalg.qr(components.T.astype(np.float64))[0]
    cosines = np.linalg.svd(q.T @ reference.T, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def measure(dim: int, n: int, batch: int, ipca_max: int, device: str | None = None) -> dict[str, float]:
    from sklearn.decomposition import IncrementalPCA

    data = np.concatenate(list(planted_batches(n, dim, batch)))
    centred = data.astype(np.float64)
    centred -= centred.mean(0)
    reference = np.linalg.svd(centred, full_matrices=False)[2][:RANK]
    del centred

    pca = StreamingPCA(dim)
    pca.update(data[:batch])  # warm-up, then start over
    pca = StreamingPCA(dim)
    began = time.perf_counter()
    for start in range(0, n, batch):
        pca.update(data[start:start + batch])
    stream_seconds = time.perf_counter() - began
    began = time.perf_counter()
    result = pca.result(COMPONENTS)
    eig_seconds = time.perf_counter() - began

    seen = min(n, ipca_max)
    ipca = IncrementalPCA(n_components=COMPONENTS, batch_size=batch)
    began = time.perf_counter()
    for start in range(0, seen, batch):
        ipca.partial_fit(data[start:min(start + batch, seen)])
    ipca_seconds = time.perf_counter() - began

    rate = gemm_rate(dim, batch)
    ours = n / stream_seconds
    theirs = seen / ipca_seconds
    on_device = device_stream(data, dim, batch, device, reference) if device else {}
    if on_device:
        on_device["device_vs_cpu"] = on_device["device_vectors_per_s"] / ours
    return {**on_device,
        "dim": dim,
        "n": n,
        "batch": batch,
        "streaming_vectors_per_s": ours,
        "ipca_vectors_per_s": theirs,
        "ipca_vectors_seen": seen,
        "speedup_vs_ipca": ours / theirs,
        "streaming_max_angle_deg": max_angle_degrees(result.components[:RANK].numpy(), reference),
        "ipca_max_angle_deg": max_angle_degrees(ipca.components_[:RANK], reference),
        "eigendecomposition_s": eig_seconds,
        "gemm_mac_per_s": rate,
        "fraction_of_gemm": ours * dim * dim / rate,
    }


def peak_rss_streaming(n: int, dim: int, batch: int) -> int:
    """Peak RSS (bytes) of a fresh process streaming `n` generated vectors through StreamingPCA.

    Read from /proc's VmHWM where there is one: Linux keeps ru_maxrss across fork and exec, so
    it would report the parent's peak instead.
    """
    code = (
        "import resource, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pca import planted_batches\n"
        "from nexus_kernel.algorithms.pca import StreamingPCA\n"
        f"pca = StreamingPCA({dim})\n"
        f"for part in planted_batches({n}, {dim}, {batch}):\n"
        "    pca.update(part)\n"
        "pca.result()\n"
        "try:\n"
        "    status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "    print(int(status.split()[0]) * 1024)\n"
        "except OSError:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--ipca-max-vectors", type=int, default=200_000,
                        help="IncrementalPCA sees at most this many vectors (it is slow at large d)")
    parser.add_argument("--memory-n", type=int, default=20_000,
                        help="memory check: stream this many and 10x as many vectors at d=1024")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="a CUDA device for the device column (default: cuda where there is one)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")

    # Memory first, while this process is still small.
    small = peak_rss_streaming(args.memory_n, 1024, args.batch)
    large = peak_rss_streaming(10 * args.memory_n, 1024, args.batch)
    rows = []
    for dim in args.dims:
        print(f"d={dim}: generating {args.n} vectors, dense SVD, StreamingPCA, IncrementalPCA ...",
              file=sys.stderr, flush=True)
        rows.append(measure(dim, args.n, args.batch, args.ipca_max_vectors, args.device))
    memory = {"dim": 1024, "n_small": args.memory_n, "n_large": 10 * args.memory_n,
              "peak_rss_small_bytes": small, "peak_rss_large_bytes": large,
              "rss_increase_fraction": large / small - 1.0}

    header = (f"{'d':>5} {'stream vec/s':>13} {'IPCA vec/s':>11} {'speed-up':>9} "
              f"{'angle stream':>13} {'angle IPCA':>11} {'GEMM GMAC/s':>12} {'of GEMM':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['dim']:>5} {row['streaming_vectors_per_s']:>13,.0f} {row['ipca_vectors_per_s']:>11,.0f} "
              f"{row['speedup_vs_ipca']:>8.1f}x {row['streaming_max_angle_deg']:>12.2e}° "
              f"{row['ipca_max_angle_deg']:>10.2e}° {row['gemm_mac_per_s'] / 1e9:>12.1f} "
              f"{row['fraction_of_gemm']:>7.0%}")
    if args.device:
        print(f"\non {args.device} (batches already there):")
        for row in rows:
            print(f"{row['dim']:>5} {row['device_vectors_per_s']:>13,.0f} vec/s, {row['device_vs_cpu']:.1f}x the CPU "
                  f"stream, angle {row['device_max_angle_deg']:.2e}°, GEMM {row['device_gemm_mac_per_s'] / 1e9:,.0f} "
                  f"GMAC/s, {row['device_fraction_of_gemm']:.0%} of it")
    else:
        print("\ndevice column: no CUDA device here (pass --device where there is one)")
    print(f"\npeak RSS streaming {memory['n_small']:,} vs {memory['n_large']:,} vectors (d=1024): "
          f"{small / 2**20:.0f} MiB vs {large / 2**20:.0f} MiB, "
          f"+{memory['rss_increase_fraction']:.1%}")
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "memory": memory,
                                      "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
