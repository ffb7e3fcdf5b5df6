"""Tile maths for the upscaler (SPEC §3 step 4): pure integer planning, blend weights, host accumulation.

No model here and no torch: the pipeline pads the LR image to ``plan.canvas_*`` (bottom/right,
with :func:`reflect_indices`), cuts every tile with :func:`tile_box`, runs the engine on batches
from :func:`iter_batches`, and feeds the HR outputs to an :class:`Accumulator`.

Blending, per axis: where two neighbouring tiles overlap, each tile's interior edge loses
``overlap // 4`` LR px (the network saw no context there, weight 0), and the rest of the overlap
is a raised-cosine cross-fade, so the weights of all tiles covering a pixel sum to 1. Canvas
borders keep weight 1. The 2-D weight of a tile is the outer product of its row and column weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, InputError
from .contract import SCALE


@dataclass(frozen=True, kw_only=True)
class TilePlan:
    """Where the tiles of one image go. All sizes in LR px; origins are in canvas coordinates.

    Build it with :func:`plan_tiles`; the constructor only checks consistency.
    """

    lr_h: int  # original LR image size
    lr_w: int
    canvas_h: int  # padded LR canvas (the image sits at its top-left)
    canvas_w: int
    tile_h: int  # LR tile shape, identical for every tile; == canvas for a whole-image run
    tile_w: int
    overlap: int  # requested LR overlap between neighbouring tiles (actual may be larger at the end)
    scale: int  # HR px per LR px
    origins: tuple[tuple[int, int], ...]  # (y, x) top-left of every tile, row-major

    def __post_init__(self) -> None:
        # A plan made by hand must still satisfy what the weights rely on; these are bugs, not user errors.
        canvas = f"{self.canvas_h}x{self.canvas_w}"
        if not (1 <= self.lr_h <= self.canvas_h and 1 <= self.lr_w <= self.canvas_w):
            raise ValueError(f"TilePlan: image {self.lr_h}x{self.lr_w} must fit in canvas {canvas}")
        if not (1 <= self.tile_h <= self.canvas_h and 1 <= self.tile_w <= self.canvas_w):
            raise ValueError(f"TilePlan: tile {self.tile_h}x{self.tile_w} must fit in canvas {canvas}")
        if not self.origins or self.origins != tuple((y, x) for y in self.ys for x in self.xs):
            raise ValueError("TilePlan: origins must be the non-empty row-major grid of the row and column origins")
        self._check_axis("y", self.ys, self.tile_h, self.canvas_h)
        self._check_axis("x", self.xs, self.tile_w, self.canvas_w)

    def _check_axis(self, axis: str, starts: tuple[int, ...], tile: int, length: int) -> None:
        gaps = np.diff(starts)
        if starts[0] != 0 or starts[-1] != length - tile or (gaps <= 0).any() or (gaps > tile - self.overlap).any():
            raise ValueError(
                f"TilePlan: {axis} origins {starts} must run from 0 to {length - tile} "
                f"in increasing steps of at most {tile - self.overlap}"
            )

    @property
    def n_tiles(self) -> int:
        return len(self.origins)

    @property
    def ys(self) -> tuple[int, ...]:
        """Distinct row origins, increasing."""
        return tuple(sorted({y for y, _ in self.origins}))

    @property
    def xs(self) -> tuple[int, ...]:
        """Distinct column origins, increasing."""
        return tuple(sorted({x for _, x in self.origins}))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: int, minimum: int, hint: str = "") -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} {value!r} must be an integer >= {minimum}{hint}")


def _check_tile(tile: int, overlap: int, multiple: int) -> None:
    _check_int("size rule", multiple, 1)
    _check_int("tile", tile, 0, " LR px (0 runs the whole image as one tile)")
    _check_int("overlap", overlap, 0, " LR px")
    if tile % multiple:
        below, above = tile // multiple * multiple, _round_up(tile, multiple)
        choices = f"{below} or {above}" if below else f"{above}"
        raise ConfigError(
            f"tile {tile} is not a multiple of the size rule {multiple}; use {choices} (or 0 for the whole image)"
        )
    if tile and overlap >= tile:
        raise ConfigError(f"overlap {overlap} must be smaller than tile {tile}; use e.g. overlap {tile // 4}")


def tile_sides(tile: int | tuple[int, int]) -> tuple[int, int]:
    """``tile`` as (h, w) LR px: an int is a square tile, 0 the whole image."""
    if isinstance(tile, tuple):
        if len(tile) != 2 or (0 in tile and tile != (0, 0)):
            raise ConfigError(f"tile {tile!r}: expected (h, w) with both sides > 0, or 0 for the whole image")
        return tile
    return tile, tile


def default_overlap(tile: int | tuple[int, int]) -> int:
    """tile/8 LR px (of the shorter side): 32 for the paper's 256 tile; at least 8 where the tile
    allows it, at most half of it."""
    side = min(tile_sides(tile))
    return min(max(8, side // 8), side // 2)


def choose_tile(lr_h: int, lr_w: int, *, max_px: int, multiple: int) -> tuple[int, int]:
    """The tile (h, w) for an image whose whole padded canvas may not fit one engine call.

    (0, 0) — the whole image in one call — when the canvas has at most ``max_px`` LR px. Otherwise
    the tile of at most ``max_px`` px (sides multiples of ``multiple``, overlap :func:`default_overlap`)
    that executes the fewest LR px in all (tiles × tile px), ties to fewer tiles: often full-width
    strips, which need overlap on one axis only. Raises ConfigError when not even one
    ``multiple``×``multiple`` block fits."""
    _check_int("size rule", multiple, 1)
    canvas_h, canvas_w = _round_up(int(lr_h), multiple), _round_up(int(lr_w), multiple)
    if canvas_h * canvas_w <= max_px:
        return 0, 0
    if multiple * multiple > max_px:
        raise ConfigError(f"no tile fits: the memory budget is {max_px} LR px, the smallest tile "
                          f"{multiple}x{multiple} needs {multiple * multiple}")
    best: tuple[tuple[int, int, int], tuple[int, int]] | None = None  # ((executed px, tiles, -short side), tile)
    for tile_h in range(multiple, canvas_h + 1, multiple):
        widths = np.arange(multiple, min(canvas_w, max_px // tile_h) + 1, multiple)
        if widths.size == 0:
            break
        short = np.minimum(widths, tile_h)
        overlap = np.minimum(np.maximum(8, short // 8), short // 2)  # default_overlap, vectorised
        tiles = _axis_counts(canvas_h, tile_h, overlap) * _axis_counts(canvas_w, widths, overlap)
        keys = np.stack([tiles * tile_h * widths, tiles, -short])
        i = int(np.lexsort(keys[::-1])[0])
        key = tuple(int(v) for v in keys[:, i])
        if best is None or key < best[0]:
            best = (key, (tile_h, int(widths[i])))
    assert best is not None  # multiple² <= max_px: the smallest tile always fits
    return best[1]


def _axis_counts(length: int, tile, overlap) -> np.ndarray:
    """Vectorised ``len(_axis_origins(length, tile, overlap))``."""
    tile, overlap = np.asarray(tile), np.asarray(overlap)
    stride = np.maximum(tile - overlap, 1)
    return np.where(tile >= length, 1, 1 + -(-(length - tile) // stride))


def downscale_factor(lr_h: int, lr_w: int, *, max_px: int, multiple: int) -> int:
    """The smallest integer factor f >= 1 whose downscaled image (ceil(side/f), padded to the size
    rule) fits ``max_px`` LR px: the cheap statistics pass of an image too large for one call."""
    factor = 1
    while _round_up(-(-lr_h // factor), multiple) * _round_up(-(-lr_w // factor), multiple) > max_px:
        if -(-lr_h // factor) == 1 and -(-lr_w // factor) == 1:
            raise ConfigError(f"no downscaled image fits a memory budget of {max_px} LR px")
        factor += 1
    return factor


def _axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Origins 0, stride, 2·stride, ... with the last one clamped to ``length - tile``; minimal count."""
    if tile >= length:
        return (0,)
    stride = tile - overlap
    count = 1 + -(-(length - tile) // stride)  # fewest tiles whose nominal stride reaches the end
    # (count-2)·stride < length-tile, so only the last origin is clamped and none repeats.
    return tuple(min(i * stride, length - tile) for i in range(count))


def plan_tiles(
    lr_h: int, lr_w: int, *, tile: int | tuple[int, int], overlap: int, multiple: int, scale: int = SCALE,
    static: bool = False,
) -> TilePlan:
    """Plan the tiles for an ``lr_h``×``lr_w`` LR image.

    ``tile`` (LR px, a multiple of ``multiple``; an int for a square tile or (h, w)) 0 runs the
    whole padded image as one tile. ``static=False``: canvas = image rounded up to ``multiple``; a
    side that fits in the tile is one tile of the canvas side (so a small image runs whole, and
    tiles may be non-square). ``static=True`` (engines with one fixed shape): canvas sides are at
    least the tile's and every tile is exactly the tile. Raises ConfigError / InputError with the
    offending values.
    """
    req_h, req_w = tile_sides(tile)
    for side in (req_h, req_w):
        _check_tile(side, overlap, multiple)
    _check_int("scale", scale, 1)
    if not (_is_int(lr_h) and _is_int(lr_w) and lr_h >= 1 and lr_w >= 1):
        raise InputError(f"image size {lr_h!r}x{lr_w!r} LR px is empty or not an integer; expected both sides >= 1")
    canvas_h, canvas_w = _round_up(int(lr_h), multiple), _round_up(int(lr_w), multiple)
    if req_h == 0:
        overlap = 0  # one tile: nothing overlaps
        tile_h, tile_w = canvas_h, canvas_w
    elif static:
        canvas_h, canvas_w = max(canvas_h, req_h), max(canvas_w, req_w)
        tile_h, tile_w = req_h, req_w
    else:
        tile_h, tile_w = min(req_h, canvas_h), min(req_w, canvas_w)
    ys = _axis_origins(canvas_h, tile_h, overlap)
    xs = _axis_origins(canvas_w, tile_w, overlap)
    return TilePlan(
        lr_h=int(lr_h), lr_w=int(lr_w), canvas_h=canvas_h, canvas_w=canvas_w, tile_h=tile_h, tile_w=tile_w,
        overlap=int(overlap), scale=int(scale), origins=tuple((y, x) for y in ys for x in xs),
    )


def reflect_indices(n: int, target: int) -> np.ndarray:
    """Index map int64 (target,) that pads a side of length ``n`` to ``target`` at its end.

    0..n-1, then mirrored without repeating the edge (numpy ``pad(mode="reflect")``), mirroring
    back and forth again when the pad is longer than the side; ``n == 1`` replicates (all zeros).
    """
    if n < 1 or target < n:
        raise ValueError(f"reflect_indices: need 1 <= n <= target, got n={n}, target={target}")
    if n == 1:
        return np.zeros(target, dtype=np.int64)
    period = 2 * (n - 1)  # 0,1,..,n-1,n-2,..,1 repeats: a triangle wave
    phase = np.arange(target, dtype=np.int64) % period
    return np.where(phase < n, phase, period - phase)


def _ramp(x: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Raised cosine from 0 (x <= start) to 1 (x >= stop); a step at ``start`` when the window is empty."""
    if stop <= start:
        return (x >= start).astype(np.float64)
    t = np.clip((x - start) / (stop - start), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _axis_weights(starts: tuple[int, ...], tile: int, crop: int, scale: int) -> np.ndarray:
    """float64 (len(starts), tile·scale) blend weights of each tile along one axis, at HR scale.

    Tiles i and i+1 cross-fade over their overlap minus ``crop`` px at each end. When more than two
    tiles overlap (overlap > tile/2, or the clamped last tile), each cross-fade window is clipped
    halfway to its neighbours' window centres, so windows never intersect and at most two tiles
    weigh on a pixel: the weights are (1 − r) and r, which sum to 1.
    """
    hr = np.asarray(starts, dtype=np.float64) * scale
    size, c = tile * scale, crop * scale
    lo = hr[1:] + c  # tile i+1's first uncropped px
    hi = hr[:-1] + size - c  # one past tile i's last uncropped px
    mid = (lo + hi) / 2
    cut = (mid[:-1] + mid[1:]) / 2  # boundaries between consecutive windows
    win_lo = np.maximum(lo, np.concatenate([[-np.inf], cut]))
    win_hi = np.minimum(hi, np.concatenate([cut, [np.inf]]))
    weights = np.empty((len(starts), size), dtype=np.float64)
    for i, start in enumerate(hr):
        centres = start + np.arange(size) + 0.5  # HR pixel centres in canvas coordinates
        up = _ramp(centres, win_lo[i - 1], win_hi[i - 1]) if i > 0 else 1.0
        down = 1.0 - _ramp(centres, win_lo[i], win_hi[i]) if i < len(starts) - 1 else 1.0
        weights[i] = up * down
    return weights


def axis_weights(plan: TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis blend weights: float64 (len(plan.ys), tile_h·scale) and (len(plan.xs), tile_w·scale).

    Tile ``k`` (row ``k // len(xs)``, column ``k % len(xs)``) weighs ``outer(rows[r], cols[c])``.
    """
    crop = plan.overlap // 4
    return (
        _axis_weights(plan.ys, plan.tile_h, crop, plan.scale),
        _axis_weights(plan.xs, plan.tile_w, crop, plan.scale),
    )


def tile_weights(plan: TilePlan) -> np.ndarray:
    """float32 (n_tiles, tile_h·scale, tile_w·scale) blend weights in [0, 1]; they sum to 1 on the canvas.

    Memory grows with the tile count; the :class:`Accumulator` builds one tile's weights at a time.
    """
    rows, cols = (w.astype(np.float32) for w in axis_weights(plan))
    out = np.empty((len(rows), len(cols), rows.shape[1], cols.shape[1]), dtype=np.float32)
    np.multiply(rows[:, None, :, None], cols[None, :, None, :], out=out)  # row-major like plan.origins
    return out.reshape(plan.n_tiles, rows.shape[1], cols.shape[1])


def tile_box(plan: TilePlan, index: int, *, hr: bool = False) -> tuple[slice, slice]:
    """(rows, cols) slices of tile ``index`` in the canvas: LR px, or HR px when ``hr``."""
    s = plan.scale if hr else 1
    y, x = plan.origins[index]
    return slice(y * s, (y + plan.tile_h) * s), slice(x * s, (x + plan.tile_w) * s)


def iter_batches(plan: TilePlan, batch: int) -> Iterator[list[int]]:
    """Tile indices in order, in chunks of at most ``batch``."""
    _check_int("batch", batch, 1)
    for first in range(0, plan.n_tiles, batch):
        yield list(range(first, min(first + batch, plan.n_tiles)))


class Accumulator:
    """Weighted sum of HR tile outputs on the host; memory is O(image), not O(tiles).

    Only the part of the canvas inside the original image is stored: the padding is cropped anyway.
    """

    def __init__(self, plan: TilePlan, channels: int = 3) -> None:
        self.plan = plan
        self._rows, self._cols = axis_weights(plan)
        self._out_h, self._out_w = plan.lr_h * plan.scale, plan.lr_w * plan.scale
        self._sum = np.zeros((channels, self._out_h, self._out_w), dtype=np.float32)
        self._weight = np.zeros((self._out_h, self._out_w), dtype=np.float32)
        self._added = np.zeros(plan.n_tiles, dtype=bool)
        self._n_cols = len(plan.xs)

    def add(self, index: int, sr_tile: np.ndarray) -> None:
        """Blend in ``sr_tile``, float32 (C, tile_h·scale, tile_w·scale), the output for tile ``index``."""
        plan = self.plan
        if not 0 <= index < plan.n_tiles:
            raise IndexError(f"Accumulator.add: tile index {index} out of range 0..{plan.n_tiles - 1}")
        if self._added[index]:
            raise ValueError(f"Accumulator.add: tile {index} was already added")
        expected = (self._sum.shape[0], plan.tile_h * plan.scale, plan.tile_w * plan.scale)
        if tuple(sr_tile.shape) != expected:
            raise ValueError(f"Accumulator.add: tile {index} has shape {tuple(sr_tile.shape)}, expected {expected}")
        self._added[index] = True
        rows_box, cols_box = tile_box(plan, index, hr=True)
        # Clip to the stored image region; the rest of the tile lies in the padding.
        y0, y1 = rows_box.start, min(rows_box.stop, self._out_h)
        x0, x1 = cols_box.start, min(cols_box.stop, self._out_w)
        if y1 <= y0 or x1 <= x0:
            return
        row, col = divmod(index, self._n_cols)
        weight = np.outer(self._rows[row, : y1 - y0], self._cols[col, : x1 - x0]).astype(np.float32)
        self._sum[:, y0:y1, x0:x1] += weight * sr_tile[:, : y1 - y0, : x1 - x0].astype(np.float32, copy=False)
        self._weight[y0:y1, x0:x1] += weight

    def result(self) -> np.ndarray:
        """float32 (C, lr_h·scale, lr_w·scale): weighted sum / weight sum. Raises if a pixel got no weight."""
        uncovered = int(np.count_nonzero(self._weight <= 0))
        if uncovered:
            raise ValueError(
                f"Accumulator.result: {uncovered} output px got no weight; "
                f"{int(self._added.sum())} of {self.plan.n_tiles} tiles were added"
            )
        return self._sum / self._weight
