"""Timers and peaks for the benchmark: latency statistics, peak memory, a matmul reference peak.

Everything here measures the process it runs in; the runner gives every scenario its own process
(so peak RSS is that scenario's, and no two timings share the cores).
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..engines.threads import CpuSnapshot, cpu_snapshot, other_processes_cores  # noqa: F401 (the bench's API)
from ..errors import ConfigError

MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}  # big enough to reach the peak, small enough to take ~0.1 s


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) with linear interpolation between order statistics.

    Same definition as ``numpy.percentile(values, q)`` (method "linear"): the rank is
    q/100·(n−1) on the sorted values, interpolated between its two neighbours."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    ordered = sorted(float(v) for v in values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Latency of repeated calls, in seconds: every sample plus min / median / p90 / mean."""

    samples_s: tuple[float, ...]
    min_s: float
    median_s: float
    p90_s: float
    mean_s: float

    @classmethod
    def from_samples(cls, samples_s: Sequence[float]) -> "LatencyStats":
        samples = tuple(float(s) for s in samples_s)
        if not samples:
            raise ValueError("LatencyStats needs at least one sample")
        return cls(samples_s=samples, min_s=min(samples), median_s=percentile(samples, 50),
                   p90_s=percentile(samples, 90), mean_s=sum(samples) / len(samples))


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def time_calls(fn: Callable[[], object], *, warmup: int, repeat: int, device: str = "cpu") -> LatencyStats:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeat`` times timed, one sample per call.

    On CUDA each call is bracketed by synchronisations and timed with CUDA events (the work of an
    engine that returns host arrays is finished when it returns; the events also catch what a
    caller left queued). On CPU: ``time.perf_counter``."""
    if warmup < 0 or repeat < 1:
        raise ConfigError(f"timing: warmup {warmup} must be >= 0 and repeat {repeat} >= 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if _is_cuda(device):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return LatencyStats.from_samples(samples)


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set, in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_device_peak(device: str) -> int | None:
    """Start a GPU memory window; returns the device's used bytes now (None on CPU)."""
    if not _is_cuda(device):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def device_memory(device: str, used_before: int | None) -> dict[str, int | None]:
    """GPU memory since :func:`reset_device_peak`: torch's allocator peak (torch engine) and the
    growth of device-wide used memory (what ONNX Runtime / TensorRT allocate outside torch)."""
    if not _is_cuda(device):
        return {"torch_peak_bytes": None, "device_used_growth_bytes": None}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    growth = None if used_before is None else int(total - free) - used_before
    return {"torch_peak_bytes": int(torch.cuda.max_memory_allocated()), "device_used_growth_bytes": growth}


def matmul_peaks(*, device: str = "cpu", precision: str = "fp32", size: int | None = None,
                 repeat: int = 8) -> dict[str, float]:
    """Best achieved GFLOP/s of a square n×n matmul (2·n³ flops per call) per implementation.

    ``torch.mm`` everywhere; on the CPU also numpy's BLAS and the same product as a 1×1
    convolution (input (1, n, h, w) with h·w = n, weight (n, n, 1, 1)), which torch runs with
    oneDNN — the library of its CPU convolutions. Measured here: on this repository's AMD EPYC
    machine MKL's sgemm reaches about half of what oneDNN does, so a torch.mm-only "peak" would
    sit below what the network itself achieves. Measured with the thread count of the calling
    process, in the process whose timing it is compared to.

    fp16 is measured on CUDA only: CPUs here have no fp16 matmul units, so the caller compares fp16
    CPU rows against the fp32 peak."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise ConfigError(f"matmul peak: precision {precision!r}, expected 'fp32', 'bf16' or 'fp16'")
    cuda = _is_cuda(device)
    n = size or MATMUL_SIZE["cuda" if cuda else "cpu"]
    gen = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    flops = 2.0 * n**3
    with torch.inference_mode():
        best_s = time_calls(lambda: torch.mm(a, b), warmup=2, repeat=repeat, device=device).min_s
    peaks = {"torch": flops / best_s / 1e9}
    if not cuda and precision in ("fp32", "bf16"):
        if precision == "fp32":
            a_np, b_np = a.numpy(), b.numpy()
            peaks["numpy"] = flops / time_calls(lambda: a_np @ b_np, warmup=2, repeat=repeat).min_s / 1e9
        h = _near_square_divisor(n)
        x, w = b.reshape(1, n, h, n // h), a.reshape(n, n, 1, 1)  # conv(x, w)[o, p] = Σ_k a[o, k]·b[k, p]
        with torch.inference_mode():
            best_s = time_calls(lambda: torch.nn.functional.conv2d(x, w), warmup=2, repeat=repeat).min_s
        peaks["torch_conv1x1"] = flops / best_s / 1e9
    return peaks


def _near_square_divisor(n: int) -> int:
    """The largest divisor of n that is <= sqrt(n) (so an n-pixel image is h × n/h, near square)."""
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


def matmul_peak_gflops(*, device: str = "cpu", precision: str = "fp32", size: int | None = None,
                       repeat: int = 8) -> float:
    """The reference peak: the best of :func:`matmul_peaks` over implementations, in GFLOP/s."""
    return max(matmul_peaks(device=device, precision=precision, size=size, repeat=repeat).values())


def load_average() -> tuple[float, float, float] | None:
    """(1, 5, 15)-minute load average, or None where the OS has none."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except (AttributeError, OSError):
        return None
