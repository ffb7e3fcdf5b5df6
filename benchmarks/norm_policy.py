"""Tiled vs whole image for each GroupNorm policy at the default tile (the measurement behind the
pipeline's default, README "Tiling"). Embedded demo weights, torch fp32, real photos.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/norm_policy.py samples/*.png > benchmarks/norm_policy.md

Per photo: PSNR of the tiled output against the whole-image run (``--tile 0``, the reference),
wall time of the pipeline and network passes, for ``--norm tile`` and ``--norm shared``."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from PIL import Image

from gtasr_deploy.upscaler import Upscaler


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(paths: list[str]) -> None:
    torch.set_num_threads(2)
    whole = Upscaler(tile=0, precision="fp32")
    policies = {norm: Upscaler(norm=norm, precision="fp32") for norm in ("tile", "shared")}
    tile = policies["tile"].options.tile
    print(f"tile {tile}, overlap {policies['tile'].options.overlap}, torch fp32, "
          f"{torch.get_num_threads()} threads, embedded demo weights\n")
    print("| photo | LR size | tiles | whole s | tile: PSNR vs whole | tile: s | shared: PSNR vs whole | shared: s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        start = time.perf_counter()
        ref = whole.upscale(rgb)
        whole_s = time.perf_counter() - start
        cells = []
        for norm, up in policies.items():
            up.upscale(rgb[:32, :32])  # warm-up
            start = time.perf_counter()
            out = up.upscale(rgb)
            cells += [f"{_psnr(out, ref):.2f} dB", f"{time.perf_counter() - start:.2f}"]
        tiles, _ = policies["shared"].work(*rgb.shape[:2])
        print(f"| {path} | {rgb.shape[1]}x{rgb.shape[0]} | {tiles} | {whole_s:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
