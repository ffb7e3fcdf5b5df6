"""Dynamic batching of tiles across concurrent requests, behind the engine interface.

A service replica runs an Upscaler built over a :class:`BatchedEngine` that wraps the model's engine
(``Upscaler.with_engine``, built on ``Upscaler.from_engine``). Each
request runs ``Upscaler.upscale_float`` on its own thread; every engine call it makes (a batch
of that image's tiles) is handed to ``submit``, which in the service is a Ray Serve
``@serve.batch`` method: calls from all in-flight requests that arrive within the batch window
are merged by :func:`run_calls` into as few real engine calls as tile shapes allow.

With shared GroupNorm statistics an image takes two passes: ``tile_statistics`` calls merge
across requests like plain calls; the second pass carries that image's pooled statistics, so it
merges only with calls that carry the same statistics. Engines are stateless between calls
(statistics are inputs), and only the service's one engine thread calls the real engine.

Batch composition changes CPU results in the last float bit (oneDNN picks kernels by batch
size); after 8/16-bit quantisation a batched tile can differ from the CLI's by one code value
in a few pixels. A request that runs alone gets the CLI's bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..engines.base import Engine


@dataclass(frozen=True)
class TileCall:
    """One engine call of one request: N tiles of one shape (``method``: "__call__" or "tile_statistics")."""

    method: str
    x_t: np.ndarray  # (N, 3, 4h, 4w)
    lq: np.ndarray  # (N, 3, h, w)
    sigma: np.ndarray  # (N,)
    norm_stats: np.ndarray | None = None  # one image's pooled GroupNorm statistics, shared by its tiles

    @property
    def tiles(self) -> int:
        return int(self.lq.shape[0])

    def key(self) -> tuple:
        """Calls with equal keys can share one engine call."""
        stats = None if self.norm_stats is None else self.norm_stats.tobytes()
        return self.method, self.lq.shape[1:], self.x_t.shape[1:], stats


@dataclass
class BatchStats:
    """Counters a health check shows: how much batching actually happened."""

    engine_calls: int = 0
    tiles: int = 0
    largest_batch: int = 0
    requests_merged: int = 0  # engine calls that carried tiles of more than one request


class BatchedEngine:
    """Engine proxy: tile calls go to ``submit``; everything else (``info``, ``close``...) is the engine's."""

    def __init__(self, engine: Engine, submit: Callable[[TileCall], np.ndarray]) -> None:
        self.engine = engine
        self._submit = submit
        self.stats = BatchStats()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def __call__(self, **inputs) -> np.ndarray:
        return self._route("__call__", inputs)

    def tile_statistics(self, **inputs) -> np.ndarray:
        return self._route("tile_statistics", inputs)

    def _route(self, method: str, inputs: dict) -> np.ndarray:
        lq = np.asarray(inputs["lq"], np.float32)
        sigma = np.broadcast_to(np.asarray(inputs["sigma"], np.float32).reshape(-1), (len(lq),))
        stats = inputs.get("norm_stats")
        return self._submit(TileCall(method, np.asarray(inputs["x_t"], np.float32), lq, sigma,
                                     None if stats is None else np.asarray(stats, np.float32)))

    def _method(self, method: str):
        return self.engine if method == "__call__" else getattr(self.engine, method)

    def run_calls(self, calls: Sequence[TileCall]) -> list[np.ndarray | BaseException]:
        """Run many requests' calls as few engine calls; one result (or the error) per call."""
        results: list[np.ndarray | BaseException | None] = [None] * len(calls)
        groups: dict[tuple, list[int]] = {}
        for i, call in enumerate(calls):
            groups.setdefault(call.key(), []).append(i)
        for members in groups.values():
            try:
                outputs = self._run_group([calls[i] for i in members])
            except Exception as exc:  # noqa: BLE001 - handed back to each waiting request
                outputs = [exc] * len(members)
            for i, out in zip(members, outputs):
                results[i] = out
        return results

    def _run_group(self, calls: list[TileCall]) -> list[np.ndarray]:
        x_t = np.concatenate([c.x_t for c in calls])
        lq = np.concatenate([c.lq for c in calls])
        sigma = np.concatenate([c.sigma for c in calls])
        extra = {} if calls[0].norm_stats is None else {"norm_stats": calls[0].norm_stats}
        run, step = self._method(calls[0].method), self.engine.info.max_batch
        parts = [run(x_t=x_t[i:i + step], lq=lq[i:i + step], sigma=sigma[i:i + step], **extra)
                 for i in range(0, len(lq), step)]
        self._count(calls, len(lq), len(parts))
        out = np.concatenate(parts)
        bounds = np.cumsum([0] + [c.tiles for c in calls])
        return [out[a:b] for a, b in itertools.pairwise(bounds)]

    def _count(self, calls: list[TileCall], tiles: int, engine_calls: int) -> None:
        s = self.stats
        s.engine_calls += engine_calls
        s.tiles += tiles
        s.largest_batch = max(s.largest_batch, min(tiles, self.engine.info.max_batch))
        s.requests_merged += int(len(calls) > 1)
