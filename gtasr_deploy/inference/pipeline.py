"""One inference pipeline for every backend (SPEC §3): the only place an image meets an engine.

    lq (3, h, w) in [-1, 1] ──reflect-pad (size rule; a static graph's tile)──► lq_pad
    x_K = up(lq_pad) + eps            eps ~ N(0, I) seeded, drawn once for the whole canvas
    tile auto:   the whole image in one engine call when the memory model says it fits, else the
                 tile of the largest size that fits which executes the fewest pixels (tiling.choose_tile)
    one tile:    sr = engine(x_K, lq_pad, 1)                      (exactly the whole-image output)
    > 1 tile, norm "shared": statistics pass, then every tile normalised with the pooled statistics
        stats "downscaled": the image downscaled f× (area), f the smallest factor >= the policy's that
                            fits memory, in one call (auto) or cut into the same tiles (a tile that was
                            asked for, a static graph): about 1/f² of a pass
        stats "tiles":      every tile once with its own statistics, pooled (host, float64): one pass
    > 1 tile, norm "tile": each tile its own statistics (one pass)
    blend sr_i on the host (crop + raised-cosine feather) ──► crop ──► (sr + 1) / 2 clamped to [0, 1]

Noise and up(lq) are computed once for the padded image and cropped per tile, so every backend and
every tile size sees the same x_K values (SPEC §1): an engine that takes any shape (torch, and
graphs exported with dynamic height and width) computes the same picture for the same plan, and a
static-shape graph pads an image smaller than its tile to it. An allocation failure during an image
retries it with a smaller batch, then smaller tiles (engines that take any shape), before it is
reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..engines.base import Engine
from ..errors import ConfigError, InputError, OutOfMemoryError
from ..model.shared_norm import pool_statistics
from ..model.conventions import SIGMA_ONE, to_unit_range
from ..model.schedule import one_step_start
from ..tiling import (Accumulator, TilePlan, choose_tile, default_overlap, downscale_factor, iter_batches,
                      plan_tiles, reflect_indices, tile_box, tile_sides)
from .memory import is_out_of_memory

ProgressFn = Callable[[int, int], None]  # (network passes done, passes total) for one image
BudgetFn = Callable[[], "int | None"]  # LR px one engine call may take now; None = no limit known
NORM_POLICIES = ("shared", "tile")
STATS_POLICIES = ("downscaled", "tiles")
__all__ = ["NORM_POLICIES", "STATS_POLICIES", "Pipeline", "TilePolicy", "Work", "default_overlap"]


@dataclass(frozen=True, kw_only=True)
class TilePolicy:
    """How an image is cut and normalised.

    ``tile`` LR px (an int for a square tile or (h, w); multiples of the size rule), 0 = the whole
    image in one call, None = auto (whole image when it fits the memory budget, else the tile that
    fits and executes the fewest pixels); ``overlap`` LR px (None: :func:`default_overlap` of the
    tile); ``batch`` tiles per engine call; ``norm`` "shared" (GroupNorm statistics pooled over the
    image, so tiles follow the whole image) or "tile"; ``stats`` how shared statistics are gathered
    when an image has several tiles: "downscaled" (one call on the image downscaled at least
    ``stats_factor``×) or "tiles" (every tile once more)."""

    tile: int | tuple[int, int] | None
    overlap: int | None = None
    batch: int = 1
    norm: str = "shared"
    stats: str = "downscaled"
    stats_factor: int = 2

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch {self.batch} must be >= 1")
        if self.norm not in NORM_POLICIES:
            raise ConfigError(f"normalisation {self.norm!r}, expected one of {list(NORM_POLICIES)}")
        if self.stats not in STATS_POLICIES:
            raise ConfigError(f"statistics {self.stats!r}, expected one of {list(STATS_POLICIES)}")
        if self.stats_factor < 2:
            raise ConfigError(f"statistics downscale factor {self.stats_factor}, expected >= 2")

    @property
    def shared_norm(self) -> bool:
        return self.norm == "shared"


@dataclass(frozen=True, kw_only=True)
class Work:
    """What one image costs: its plan, network passes per tile and the statistics pass's LR px."""

    plan: TilePlan
    passes: int  # 2 when a statistics pass over the tiles precedes the shared pass, else 1
    stats_factor: int = 0  # > 1: statistics from the image downscaled this many times (``stats_plan``)
    stats_plan: TilePlan | None = None  # the downscaled image's calls

    @property
    def stats_px(self) -> int:
        """LR px of the downscaled statistics pass (0 without one)."""
        small = self.stats_plan
        return 0 if small is None else small.n_tiles * small.tile_h * small.tile_w

    @property
    def calls(self) -> int:
        """Engine calls (batch 1) for the image: what a progress bar counts."""
        return self.plan.n_tiles * self.passes + (0 if self.stats_plan is None else self.stats_plan.n_tiles)

    @property
    def executed_px(self) -> int:
        """LR px the network runs for this image, statistics pass included."""
        plan = self.plan
        return plan.n_tiles * plan.tile_h * plan.tile_w * self.passes + self.stats_px

    @property
    def pixel_ratio(self) -> float:
        """Executed LR px per output LR px (1.0 = every pixel once, no padding)."""
        return self.executed_px / (self.plan.lr_h * self.plan.lr_w)


class Pipeline:
    """``Pipeline(engine, policy, seed)(lq) -> sr``; deterministic for fixed (seed, plan, norm, stats).

    ``budget``: the LR px one engine call may take now (from :mod:`.memory`), asked once per image
    when the policy's tile is auto; None (or a budget that returns None) = no limit known."""

    def __init__(self, engine: Engine, policy: TilePolicy, *, seed: int = 0,
                 log: Callable[[str], None] | None = None, budget: BudgetFn | None = None) -> None:
        info = engine.info
        if info.tile_lr is not None:
            if info.tile_lr[0] != info.tile_lr[1]:
                raise ConfigError(f"{info.backend} engine has a non-square tile {info.tile_lr}; not supported")
            if policy.tile is None:
                policy = replace(policy, tile=info.tile_lr[0])
            elif tile_sides(policy.tile) != tuple(info.tile_lr):
                raise ConfigError(f"tile {policy.tile} requested, but the {info.backend} engine was built for "
                                  f"tile {info.tile_lr[0]}; use that tile or export a graph with dynamic shapes")
        if policy.norm == "shared" and "shared" not in info.norm_modes:
            raise ConfigError(f"{info.backend} engine cannot share GroupNorm statistics across tiles "
                              f"(it supports {list(info.norm_modes)}); use per-tile normalisation")
        if policy.tile is not None:  # validate now
            overlap = default_overlap(policy.tile) if policy.overlap is None else policy.overlap
            plan_tiles(1, 1, tile=policy.tile, overlap=overlap if policy.tile else 0, multiple=info.size_multiple)
        self.engine, self.policy, self.seed = engine, policy, int(seed)
        self.log = log or (lambda _message: None)
        self.budget = budget or (lambda: None)

    # -- planning -----------------------------------------------------------------------------------
    def _max_px(self) -> int | None:
        """LR px one call may take: the memory budget, within an engine's largest shape."""
        info = self.engine.info
        budget = self.budget()
        if info.lr_max is not None:
            engine_px = info.lr_max[0] * info.lr_max[1]
            budget = engine_px if budget is None else min(budget, engine_px)
        return budget

    def _tile_for(self, h: int, w: int, policy: TilePolicy, max_px: int | None) -> int | tuple[int, int]:
        if policy.tile is not None:
            return policy.tile
        if max_px is None:
            return 0
        info = self.engine.info
        tile = choose_tile(h, w, max_px=max_px, multiple=info.size_multiple)
        if info.lr_max is not None and tile == (0, 0):
            m = info.size_multiple
            if -(-h // m) * m > info.lr_max[0] or -(-w // m) * m > info.lr_max[1]:
                tile = info.lr_max  # fits in pixels but not in the engine's largest shape
        return 0 if tile == (0, 0) else tile

    def plan(self, h: int, w: int, policy: TilePolicy | None = None, max_px: int | None = None) -> TilePlan:
        policy = policy or self.policy
        info = self.engine.info
        tile = self._tile_for(h, w, policy, max_px)
        overlap = 0 if tile == 0 else default_overlap(tile) if policy.overlap is None else policy.overlap
        # a tile that was asked for (or a static graph's) is the shape of every call, so an explicit
        # tile on any engine gives a static graph's picture; auto tiles follow the image
        return plan_tiles(h, w, tile=tile, overlap=overlap, multiple=info.size_multiple, scale=info.scale,
                          static=info.tile_lr is not None or policy.tile not in (None, 0))

    def cost(self, h: int, w: int, policy: TilePolicy | None = None, max_px: int | None = None) -> Work:
        """The plan and the passes for an h×w LR image (``max_px`` None: asked of the budget)."""
        policy = policy or self.policy
        if max_px is None and policy.tile is None:
            max_px = self._max_px()
        plan = self.plan(h, w, policy, max_px)
        if policy.norm != "shared" or plan.n_tiles == 1:
            return Work(plan=plan, passes=1)
        if policy.stats == "downscaled":
            factor = policy.stats_factor
            if max_px is not None:
                factor = max(factor, downscale_factor(h, w, max_px=max_px, multiple=self.engine.info.size_multiple))
            small = self.plan(-(-h // factor), -(-w // factor), policy, max_px)
            return Work(plan=plan, passes=1, stats_factor=factor, stats_plan=small)
        return Work(plan=plan, passes=2)

    def work(self, h: int, w: int) -> tuple[int, int]:
        """(tiles, passes per tile) for an h×w LR image: what an estimate counts."""
        cost = self.cost(h, w)
        return cost.plan.n_tiles, cost.passes

    # -- running ------------------------------------------------------------------------------------
    def __call__(self, lq: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """lq float32 (3, h, w) in [-1, 1] → float32 (3, 4h, 4w) in [0, 1] (not quantised)."""
        if lq.ndim != 3 or lq.shape[0] != 3:
            raise InputError(f"expected an LR image of shape (3, h, w), got {tuple(lq.shape)}")
        policy = self.policy
        cost = self.cost(lq.shape[1], lq.shape[2], policy)
        if policy.tile is None and cost.plan.n_tiles > 1:
            stats = (f"statistics from a {cost.stats_factor}x downscaled pass" if cost.stats_factor else
                     "statistics from every tile" if cost.passes == 2 else "per-tile statistics")
            self.log(f"image {lq.shape[2]}x{lq.shape[1]} LR px does not fit one call in memory: "
                     f"{cost.plan.n_tiles} tiles of {_tile_text(cost.plan)}, {stats} "
                     f"({cost.pixel_ratio:.2f} px run per px)")
        while True:
            try:
                return self._run(lq, policy, cost, progress)
            except Exception as err:  # noqa: BLE001 - only allocation failures are retried, the rest re-raised
                if not is_out_of_memory(err):
                    raise
                smaller = self._smaller(policy, cost.plan)
                if smaller is None:
                    raise OutOfMemoryError(f"out of memory even at tile {_tile_text(cost.plan)}, batch "
                                           f"{policy.batch} ({_first_line(err)})") from None
                self.log(f"out of memory at tile {_tile_text(cost.plan)}, batch {policy.batch}; retrying with "
                         f"tile {_tile_text(smaller.tile)}, batch {smaller.batch}")
                policy = smaller
                tile_px = cost.plan.tile_h * cost.plan.tile_w
                cost = self.cost(lq.shape[1], lq.shape[2], policy, max_px=tile_px // 4 if tile_px >= 4 else 1)

    def _smaller(self, policy: TilePolicy, plan: TilePlan) -> TilePolicy | None:
        """The next policy to try after an allocation failure, or None when nothing is smaller."""
        info = self.engine.info
        if policy.batch > 1:
            return replace(policy, batch=max(1, policy.batch // 2))
        if info.tile_lr is not None:
            return None
        multiple = info.size_multiple
        tile_h, tile_w = (side // 2 // multiple * multiple for side in (plan.tile_h, plan.tile_w))
        if tile_h < multiple or tile_w < multiple:
            return None
        tile = tile_h if tile_h == tile_w else (tile_h, tile_w)
        return replace(policy, tile=tile, overlap=default_overlap(tile))  # at most tile/2: always valid

    def _canvas(self, lq: np.ndarray, plan: TilePlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_K, lq) of the padded canvas: x_K = up(lq_pad) + eps, eps ~ N(0, I), a_K = s_K = 1."""
        _, h, w = lq.shape
        lq_t = torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32))
        rows = torch.from_numpy(reflect_indices(h, plan.canvas_h))
        cols = torch.from_numpy(reflect_indices(w, plan.canvas_w))
        lq_pad = lq_t.index_select(1, rows).index_select(2, cols)[None]
        x_k = one_step_start(lq_pad, seed=seed, scale=plan.scale)
        return x_k[0].numpy(), lq_pad[0].numpy()

    def _statistics(self, lq: np.ndarray, plan: TilePlan, batch: int, advance: Callable[[int], None]) -> np.ndarray:
        """(2, S) GroupNorm statistics of ``lq`` run as ``plan``: each call's own, pooled over the calls."""
        x_k, lq_pad = self._canvas(lq, plan, self.seed)
        stats = []
        for indices in iter_batches(plan, batch):
            stats.append(self.engine.tile_statistics(**_feeds(plan, indices, x_k, lq_pad)))
            advance(len(indices))
        return pool_statistics(np.concatenate(stats))

    def _run(self, lq: np.ndarray, policy: TilePolicy, cost: Work, progress: ProgressFn | None) -> np.ndarray:
        engine, info, plan = self.engine, self.engine.info, cost.plan
        batch = min(policy.batch, info.max_batch)
        total, done = cost.calls, 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, total)

        pooled = None
        if cost.stats_plan is not None:  # the image downscaled (area), its own padding and noise
            small = cost.stats_plan
            lq_small = F.interpolate(torch.from_numpy(np.ascontiguousarray(lq))[None], mode="area",
                                     size=(small.lr_h, small.lr_w))[0].numpy()
            pooled = self._statistics(lq_small, small, batch, advance)
        elif cost.passes == 2:
            pooled = self._statistics(lq, plan, batch, advance)
        x_k_np, lq_np = self._canvas(lq, plan, self.seed)
        acc = Accumulator(plan, channels=3)
        for indices in iter_batches(plan, batch):
            feeds = _feeds(plan, indices, x_k_np, lq_np)
            sr = engine(**feeds) if pooled is None else engine(**feeds, norm_stats=pooled)
            for i, tile_out in zip(indices, sr):
                acc.add(i, tile_out)
            advance(len(indices))
        out = acc.result()
        return np.clip(to_unit_range(out), 0.0, 1.0, out=out)


def _feeds(plan: TilePlan, indices: list[int], x_k: np.ndarray, lq: np.ndarray) -> dict[str, np.ndarray]:
    """The engine inputs of the tiles ``indices`` of ``plan``, cut from the canvas's x_K and lq."""
    return {"x_t": np.stack([x_k[(slice(None), *tile_box(plan, i, hr=True))] for i in indices]),
            "lq": np.stack([lq[(slice(None), *tile_box(plan, i))] for i in indices]),
            "sigma": np.full(len(indices), SIGMA_ONE, dtype=np.float32)}


def _tile_text(tile) -> str:
    if isinstance(tile, TilePlan):
        tile = (tile.tile_h, tile.tile_w)
    if tile in (0, (0, 0), None):
        return "whole"
    h, w = tile_sides(tile)
    return f"{h}" if h == w else f"{h}x{w}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
