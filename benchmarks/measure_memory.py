"""Measure the memory model shipped in gtasr_deploy/inference/memory.py (peak RSS growth of one
engine call per LR tile, torch CPU). Run: python benchmarks/measure_memory.py PRESET PRECISION TILE...
Each tile runs in a fresh process so peaks do not mask each other; prints JSON lines."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def _one(preset: str, precision: str, tile: int, batch: int) -> dict:
    import numpy as np
    import torch

    from gtasr_deploy.engines.torch_engine import TorchEngine
    from gtasr_deploy.inference.loader import load_denoiser

    torch.set_num_threads(2)
    model = load_denoiser(None if preset == "demo" else None, preset=None if preset == "demo" else preset,
                          random_ok=True).model
    engine = TorchEngine(model, precision=precision)
    rng = np.random.default_rng(0)
    lq = rng.uniform(-1, 1, (batch, 3, tile, tile)).astype(np.float32)
    x_t = rng.standard_normal((batch, 3, 4 * tile, 4 * tile)).astype(np.float32)
    sigma = np.ones(batch, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[1]) * resource.getpagesize()
    engine(x_t=x_t, lq=lq, sigma=sigma)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"preset": preset, "precision": precision, "tile": tile, "batch": batch,
            "rss_before": current, "peak_growth_bytes": peak - max(current, 0), "maxrss_before": before}


if __name__ == "__main__":
    if sys.argv[1] == "--one":
        print(json.dumps(_one(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        sys.exit(0)
    preset, precision, *tiles = sys.argv[1:]
    for tile in tiles:
        subprocess.run([sys.executable, __file__, "--one", preset, precision, tile, "1"], check=True)
