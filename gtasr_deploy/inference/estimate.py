"""An estimate of a run's duration before it starts: network passes × the time of one pass.

The pass time is measured, not guessed: one warm-up call of the engine on a tile of the run's own
shape (it also pays the one-time start-up cost, so the estimate covers steady state).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .pipeline import Pipeline


def image_sizes(paths: Iterable[Path]) -> list[tuple[int, int]]:
    """(height, width) of each readable image from its header (no decode); unreadable ones are skipped."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as im:
                sizes.append((im.height, im.width))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


def total_passes(pipeline: Pipeline, sizes: Iterable[tuple[int, int]]) -> int:
    """Network passes (tiles × passes per tile) the run will make, in tiles of the pipeline's shape."""
    total = 0
    for h, w in sizes:
        tiles, passes = pipeline.work(h, w)
        total += tiles * passes
    return total


def seconds_per_pass(pipeline: Pipeline) -> float:
    """Time one engine call of one tile (after a warm-up call)."""
    engine, tile = pipeline.engine, pipeline.policy.tile
    scale = engine.info.scale
    rng = np.random.default_rng(0)
    feeds = {"x_t": rng.standard_normal((1, 3, tile * scale, tile * scale), dtype=np.float32),
             "lq": rng.uniform(-1, 1, (1, 3, tile, tile)).astype(np.float32), "sigma": np.ones(1, np.float32)}
    engine(**feeds)  # warm-up: lazy initialisation, kernel selection
    start = time.perf_counter()
    engine(**feeds)
    return time.perf_counter() - start


def describe(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
