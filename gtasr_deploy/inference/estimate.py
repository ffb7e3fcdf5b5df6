"""An estimate of a run's duration before it starts: network passes × the time of one pass.

The pass time is measured, not guessed: one warm-up call of the engine on a tile of the run's own
shape (it also pays the one-time start-up cost, so the estimate covers steady state).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..model.conventions import SIGMA_ONE
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


def total_work(pipeline: Pipeline, sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """(engine calls, LR px the network runs) for images of these sizes, statistics passes included."""
    calls = pixels = 0
    for h, w in sizes:
        cost = pipeline.cost(h, w)
        calls += cost.calls
        pixels += cost.executed_px
    return calls, pixels


def seconds_per_lr_px(pipeline: Pipeline, side: int = 128) -> float:
    """Time of one engine call on a block of about ``side``² LR px (after a warm-up call), per LR px."""
    engine = pipeline.engine
    info = engine.info
    m = info.size_multiple
    h, w = info.tile_lr or (max(m, side // m * m),) * 2
    rng = np.random.default_rng(0)
    feeds = {"x_t": rng.standard_normal((1, 3, h * info.scale, w * info.scale), dtype=np.float32),
             "lq": rng.uniform(-1, 1, (1, 3, h, w)).astype(np.float32), "sigma": np.full(1, SIGMA_ONE, np.float32)}
    engine(**feeds)  # warm-up: lazy initialisation, kernel selection
    start = time.perf_counter()
    engine(**feeds)
    return (time.perf_counter() - start) / (h * w)


def describe(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
