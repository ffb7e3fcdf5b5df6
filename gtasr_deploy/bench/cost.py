"""Compute cost of the network: multiply-accumulates counted by tracing, and a roofline projection.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, transposed
convolutions, linear layers and the attention matmuls; normalisation, activations and
resampling are not counted, as is usual for "GMAC" figures). MACs = counted flops / 2. The model
is traced on the ``meta`` device: shapes only, no memory, no arithmetic, so the paper network
at any tile costs well under a second to count.

Sanity check (SPEC §6): the paper preset counts ≈153 GMAC per 64×64 LR input and ≈613 per 128×128.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from ..model import build_model, count_parameters
from ..model.conventions import SIGMA_ONE

PAPER_SECONDS_128 = 0.08  # SPEC §6: 128×128 input on one RTX 4090
PAPER_DEVICE = "NVIDIA GeForce RTX 4090"


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-accumulates of one call ``fn(*args, **kwargs)``, counted by tracing (flops / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


def count_model_macs(config: Any, *, tile_lr: tuple[int, int], batch: int = 1) -> int:
    """MACs of one call of D built from ``config`` (preset name / NetworkConfig / dict) on a
    ``batch`` of LR tiles of ``tile_lr`` = (h, w) px. Weights do not change the count, so the
    network is built on the meta device from its config alone."""

    with torch.device("meta"):
        model = build_model(config)
    h, w = tile_lr
    scale = model.config.scale
    x_t = torch.empty(batch, 3, h * scale, w * scale, device="meta")
    lq = torch.empty(batch, 3, h, w, device="meta")
    sigma = torch.full((batch,), SIGMA_ONE, device="meta")
    return count_macs(model, x_t, sigma, lq)


def count_model_params(config: Any) -> int:
    """Parameters of D built from ``config`` (on the meta device: no memory, no initialisation cost)."""
    with torch.device("meta"):
        return count_parameters(build_model(config))


@dataclass(frozen=True, kw_only=True)
class GpuPeak:
    """Datasheet peaks of one GPU (dense, no sparsity), in TFLOP/s and GB/s."""

    name: str
    fp16_tensor_tflops: float  # dense fp16 tensor-core peak (fp32 accumulate where the sheet splits them)
    fp32_tflops: float  # non-tensor fp32 peak
    bandwidth_gbs: float
    source: str


GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak(name="RTX 4090", fp16_tensor_tflops=165.2, fp32_tflops=82.6, bandwidth_gbs=1008.0,
            source="NVIDIA Ada Lovelace architecture whitepaper: FP16 tensor with FP32 accumulate "
                   "165.2 dense (330.3 with FP16 accumulate; sparsity doubles both), FP32 82.6, 1008 GB/s"),
    GpuPeak(name="A100 SXM 80GB", fp16_tensor_tflops=312.0, fp32_tflops=19.5, bandwidth_gbs=2039.0,
            source="NVIDIA A100 datasheet: FP16 tensor 312 dense (624 sparse), FP32 19.5, 2039 GB/s"),
    GpuPeak(name="H100 SXM", fp16_tensor_tflops=989.4, fp32_tflops=66.9, bandwidth_gbs=3350.0,
            source="NVIDIA H100 datasheet: FP16 tensor 1979 with sparsity (989 dense), FP32 67, 3.35 TB/s"),
    GpuPeak(name="L4", fp16_tensor_tflops=121.0, fp32_tflops=30.3, bandwidth_gbs=300.0,
            source="NVIDIA L4 datasheet: FP16 tensor 242 with sparsity (121 dense), FP32 30.3, 300 GB/s"),
)


def roofline_projection(macs: int, *, param_count: int, peaks: tuple[GpuPeak, ...] = GPU_PEAKS,
                        reference_s: float = PAPER_SECONDS_128) -> list[dict[str, Any]]:
    """Lower-bound latency of one call on each GPU from its datasheet peaks (a projection, not a
    measurement): time = max(compute, weight traffic), compute = 2·MACs / peak, weight traffic =
    parameters × bytes per weight / bandwidth (activation traffic is not modelled, so this is a
    floor that real kernels do not reach). fp16 assumes tensor cores; fp32 the plain fp32 units."""
    rows = []
    for gpu in peaks:
        for precision, tflops, weight_bytes in (("fp16", gpu.fp16_tensor_tflops, 2), ("fp32", gpu.fp32_tflops, 4)):
            compute_s = 2.0 * macs / (tflops * 1e12)
            memory_s = param_count * weight_bytes / (gpu.bandwidth_gbs * 1e9)
            floor_s = max(compute_s, memory_s)
            rows.append({"gpu": gpu.name, "precision": precision, "peak_tflops": tflops,
                         "bandwidth_gbs": gpu.bandwidth_gbs, "compute_bound_s": compute_s,
                         "weight_traffic_s": memory_s, "floor_s": floor_s,
                         "floor_vs_paper": floor_s / reference_s, "source": gpu.source})
    return rows


def paper_efficiency(macs: int) -> dict[str, float]:
    """What the paper's 0.08 s per 128×128 input implies on its RTX 4090: achieved TFLOP/s
    (2·MACs / 0.08 s) and its fraction of the fp16-tensor and fp32 datasheet peaks."""
    gpu = next(g for g in GPU_PEAKS if g.name == "RTX 4090")
    achieved_tflops = 2.0 * macs / PAPER_SECONDS_128 / 1e12
    return {"achieved_tflops": achieved_tflops,
            "fraction_of_fp16_tensor": achieved_tflops / gpu.fp16_tensor_tflops,
            "fraction_of_fp32": achieved_tflops / gpu.fp32_tflops}


def cost_tables(networks: list[tuple[str, Any]], tiles: list[int], *,
                projection_tile: int = 128) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(costs, projection) for the report: parameters and GMAC per (preset, tile) at batch 1, and
    the roofline projection of every preset at ``projection_tile`` (the paper's 128×128)."""
    costs, projection = [], []
    for label, network in networks:
        params = count_model_params(network)
        for tile in sorted(set(tiles)):
            costs.append({"preset": label, "tile": tile, "params": params,
                          "gmacs": count_model_macs(network, tile_lr=(tile, tile)) / 1e9})
        macs = count_model_macs(network, tile_lr=(projection_tile, projection_tile))
        projection += [{"preset": label, **row} for row in roofline_projection(macs, param_count=params)]
    return costs, projection
