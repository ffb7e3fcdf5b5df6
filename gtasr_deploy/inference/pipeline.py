"""One inference pipeline for every backend (SPEC §3): the only place an image meets an engine.

    lq (3, h, w) in [-1, 1] ──reflect-pad (size rule, at least one tile)──► lq_pad
    x_K = up(lq_pad) + eps            eps ~ N(0, I) seeded, drawn once for the whole canvas
    norm "shared", > 1 tile:  pass 1  stats_i = engine.tile_statistics(x_K[tile i], lq_pad[tile i], 1)
                              pooled  = pool_statistics(stats_1..n)            (host, float64)
                              pass 2  sr_i = engine(x_K[tile i], lq_pad[tile i], 1, norm_stats=pooled)
    norm "tile" or one tile:          sr_i = engine(x_K[tile i], lq_pad[tile i], 1)
    blend sr_i on the host (crop + raised-cosine feather) ──► crop ──► (sr + 1) / 2 clamped to [0, 1]

Every engine gets the same fixed-shape tiles: an image smaller than the tile is padded to it, for
torch as for a static ONNX/TensorRT graph, so every backend computes the same picture. ``tile=0``
(whole image in one call) is the reference, for engines that take any shape. Noise and up(lq) are
computed once for the padded image and cropped per tile, so every backend and every tile size sees
the same x_K values (SPEC §1). An allocation failure during an image retries it with a smaller batch,
then smaller tiles (engines that take any shape), before it is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..engines.base import Engine
from ..errors import ConfigError, InputError, OutOfMemoryError
from ..model.shared_norm import pool_statistics
from ..schedule import unit_noise, up
from ..tiling import Accumulator, TilePlan, iter_batches, plan_tiles, reflect_indices, tile_box
from .memory import is_out_of_memory

ProgressFn = Callable[[int, int], None]  # (network passes done, passes total) for one image
NORM_POLICIES = ("shared", "tile")


def default_overlap(tile: int) -> int:
    """tile/8 LR px: 32 for the paper's 256 tile; at least 8 where the tile allows it, at most half."""
    return min(max(8, tile // 8), tile // 2)


@dataclass(frozen=True, kw_only=True)
class TilePolicy:
    """How an image is cut and normalised.

    ``tile`` LR px (a multiple of the size rule), 0 = the whole image in one call; ``overlap`` LR px;
    ``batch`` tiles per engine call; ``norm`` "shared" (GroupNorm statistics pooled over the tiles of
    an image, two network passes per tile when there is more than one tile) or "tile"."""

    tile: int
    overlap: int
    batch: int = 1
    norm: str = "shared"

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch {self.batch} must be >= 1")
        if self.norm not in NORM_POLICIES:
            raise ConfigError(f"normalisation {self.norm!r}, expected one of {list(NORM_POLICIES)}")

    @property
    def shared_norm(self) -> bool:
        return self.norm == "shared"


class Pipeline:
    """``Pipeline(engine, policy, seed)(lq) -> sr``; deterministic for fixed (seed, tile, overlap, norm)."""

    def __init__(self, engine: Engine, policy: TilePolicy, *, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        info = engine.info
        if info.tile_lr is not None:
            if info.tile_lr[0] != info.tile_lr[1]:
                raise ConfigError(f"{info.backend} engine has a non-square tile {info.tile_lr}; not supported")
            if policy.tile != info.tile_lr[0]:
                raise ConfigError(f"tile {policy.tile} requested, but the {info.backend} engine was built for "
                                  f"tile {info.tile_lr[0]}; use that tile or export another graph")
        if policy.norm == "shared" and "shared" not in info.norm_modes:
            raise ConfigError(f"{info.backend} engine cannot share GroupNorm statistics across tiles "
                              f"(it supports {list(info.norm_modes)}); use per-tile normalisation")
        plan_tiles(1, 1, tile=policy.tile, overlap=policy.overlap, multiple=info.size_multiple)  # validate now
        self.engine, self.policy, self.seed = engine, policy, int(seed)
        self.log = log or (lambda _message: None)

    # -- planning -----------------------------------------------------------------------------------
    def plan(self, h: int, w: int, policy: TilePolicy | None = None) -> TilePlan:
        policy = policy or self.policy
        info = self.engine.info
        return plan_tiles(h, w, tile=policy.tile, overlap=policy.overlap, multiple=info.size_multiple,
                          scale=info.scale, static=policy.tile > 0)

    def passes(self, plan: TilePlan, policy: TilePolicy | None = None) -> int:
        """Network passes per tile: 2 when statistics are shared over more than one tile, else 1."""
        policy = policy or self.policy
        return 2 if policy.norm == "shared" and plan.n_tiles > 1 else 1

    def work(self, h: int, w: int) -> tuple[int, int]:
        """(tiles, passes per tile) for an h×w LR image: what a progress bar or an estimate counts."""
        plan = self.plan(h, w)
        return plan.n_tiles, self.passes(plan)

    # -- running ------------------------------------------------------------------------------------
    def __call__(self, lq: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """lq float32 (3, h, w) in [-1, 1] → float32 (3, 4h, 4w) in [0, 1] (not quantised)."""
        if lq.ndim != 3 or lq.shape[0] != 3:
            raise InputError(f"expected an LR image of shape (3, h, w), got {tuple(lq.shape)}")
        policy = self.policy
        while True:
            try:
                return self._run(lq, policy, progress)
            except Exception as err:  # noqa: BLE001 - only allocation failures are retried, the rest re-raised
                if not is_out_of_memory(err):
                    raise
                smaller = self._smaller(policy, lq.shape[1], lq.shape[2])
                if smaller is None:
                    raise OutOfMemoryError(f"out of memory even at tile {policy.tile or 'whole'}, batch "
                                           f"{policy.batch} ({_first_line(err)})") from None
                self.log(f"out of memory at tile {policy.tile or 'whole'}, batch {policy.batch}; retrying with "
                         f"tile {smaller.tile}, batch {smaller.batch}")
                policy = smaller

    def _smaller(self, policy: TilePolicy, h: int, w: int) -> TilePolicy | None:
        """The next policy to try after an allocation failure, or None when nothing is smaller."""
        info = self.engine.info
        if policy.batch > 1:
            return replace(policy, batch=max(1, policy.batch // 2))
        if info.tile_lr is not None:
            return None
        multiple = info.size_multiple
        current = policy.tile or max(-(-h // multiple), -(-w // multiple)) * multiple
        tile = current // 2 // multiple * multiple
        if tile < multiple:
            return None
        return replace(policy, tile=tile, overlap=default_overlap(tile))  # at most tile/2: always valid

    def _run(self, lq: np.ndarray, policy: TilePolicy, progress: ProgressFn | None) -> np.ndarray:
        engine, info = self.engine, self.engine.info
        _, h, w = lq.shape
        plan = self.plan(h, w, policy)
        batch = min(policy.batch, info.max_batch)
        lq_t = torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32))
        rows = torch.from_numpy(reflect_indices(h, plan.canvas_h))
        cols = torch.from_numpy(reflect_indices(w, plan.canvas_w))
        lq_pad = lq_t.index_select(1, rows).index_select(2, cols)[None]
        x_k = up(lq_pad, info.scale)
        x_k += unit_noise(tuple(x_k.shape), self.seed)  # x_K = up(y0) + eps, eps ~ N(0, I), a_K = s_K = 1
        x_k_np, lq_np = x_k[0].numpy(), lq_pad[0].numpy()

        def tiles() -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
            for indices in iter_batches(plan, batch):
                feeds = {"x_t": np.stack([x_k_np[(slice(None), *tile_box(plan, i, hr=True))] for i in indices]),
                         "lq": np.stack([lq_np[(slice(None), *tile_box(plan, i))] for i in indices]),
                         "sigma": np.ones(len(indices), dtype=np.float32)}
                yield indices, feeds

        passes = self.passes(plan, policy)
        total, done = plan.n_tiles * passes, 0
        pooled = None
        if passes == 2:
            stats = []
            for indices, feeds in tiles():
                stats.append(engine.tile_statistics(**feeds))
                done += len(indices)
                if progress is not None:
                    progress(done, total)
            pooled = pool_statistics(np.concatenate(stats))
        acc = Accumulator(plan, channels=3)
        for indices, feeds in tiles():
            sr = engine(**feeds) if pooled is None else engine(**feeds, norm_stats=pooled)
            for i, tile_out in zip(indices, sr):
                acc.add(i, tile_out)
            done += len(indices)
            if progress is not None:
                progress(done, total)
        out = acc.result()
        return np.clip((out + 1.0) * 0.5, 0.0, 1.0, out=out)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
