"""Tiling invariants: coverage and partition of unity, tile shapes, minimal counts, padding maps,
exact reproduction of local operators, accumulator contract, error wording."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gtasr_deploy.errors import ConfigError, InputError
from gtasr_deploy.tiling import (
    Accumulator,
    TilePlan,
    axis_weights,
    iter_batches,
    plan_tiles,
    reflect_indices,
    tile_box,
    tile_weights,
)

SCALE = 4
SIZES = [(1, 1), (1, 500), (7, 3), (64, 64), (65, 64), (300, 200), (250, 188)]  # last: 1000×750 / 4
TILES = [32, 48, 64, 128, 256]
OVERLAPS = [0, 8, 16, 32]


def _valid_grid():
    for tile, overlap in itertools.product(TILES, OVERLAPS):
        if overlap < tile:
            yield tile, overlap


def _weight_sum(plan: TilePlan, weights: np.ndarray) -> np.ndarray:
    """float64 (canvas_h·s, canvas_w·s): sum of every tile's weights placed on the HR canvas."""
    total = np.zeros((plan.canvas_h * plan.scale, plan.canvas_w * plan.scale))
    for k in range(plan.n_tiles):
        rows, cols = tile_box(plan, k, hr=True)
        total[rows, cols] += weights[k]
    return total


# --- plans and weights -------------------------------------------------------------------------


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_weights_partition_of_unity_and_tile_shapes(size, static):
    lr_h, lr_w = size
    for tile, overlap in _valid_grid():
        plan = plan_tiles(lr_h, lr_w, tile=tile, overlap=overlap, multiple=16, static=static)
        where = f"{size} tile {tile} overlap {overlap} static {static}"
        assert plan.canvas_h % 16 == 0 and plan.canvas_w % 16 == 0, where
        assert plan.canvas_h >= lr_h and plan.canvas_w >= lr_w, where
        if static:
            assert (plan.tile_h, plan.tile_w) == (tile, tile), where
        assert len(set(plan.origins)) == plan.n_tiles, where
        for y, x in plan.origins:  # every tile in bounds, same shape by construction of the plan
            assert 0 <= y <= plan.canvas_h - plan.tile_h and 0 <= x <= plan.canvas_w - plan.tile_w, where

        weights = tile_weights(plan)
        assert weights.dtype == np.float32, where
        assert weights.shape == (plan.n_tiles, plan.tile_h * SCALE, plan.tile_w * SCALE), where
        assert weights.min() >= 0.0 and weights.max() <= 1.0, where
        np.testing.assert_allclose(_weight_sum(plan, weights), 1.0, rtol=0, atol=1e-6, err_msg=where)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("tile,overlap", [(32, 24), (32, 31), (48, 40), (64, 48), (64, 56), (128, 100), (128, 120)])
def test_heavy_overlap_still_partition_of_unity(tile, overlap, static):
    # overlap > tile/2: three or more tiles cover some pixels, cross-fade windows must not intersect.
    for lr_h, lr_w in [(7, 3), (65, 64), (150, 100)] if overlap < 31 else [(7, 3), (33, 40)]:
        plan = plan_tiles(lr_h, lr_w, tile=tile, overlap=overlap, multiple=4, static=static)
        weights = tile_weights(plan)
        assert weights.min() >= 0.0 and weights.max() <= 1.0
        np.testing.assert_allclose(_weight_sum(plan, weights), 1.0, rtol=0, atol=1e-6, err_msg=f"{lr_h}x{lr_w}")


@pytest.mark.parametrize("tile,overlap", [(64, 16), (64, 32), (48, 40), (128, 100), (32, 8)])
def test_context_starved_border_gets_zero_weight(tile, overlap):
    plan = plan_tiles(300, 200, tile=tile, overlap=overlap, multiple=16)
    crop_hr = overlap // 4 * SCALE
    assert crop_hr > 0
    weights = tile_weights(plan)
    for k, (y, x) in enumerate(plan.origins):
        w = weights[k]
        if y > 0:  # edges inside the canvas lose their border; canvas edges keep weight 1
            assert not w[:crop_hr].any()
        else:
            assert (w[0] > 0).any()
        if y + plan.tile_h < plan.canvas_h:
            assert not w[-crop_hr:].any()
        if x > 0:
            assert not w[:, :crop_hr].any()
        if x + plan.tile_w < plan.canvas_w:
            assert not w[:, -crop_hr:].any()


def test_corner_tile_weight_is_one_at_canvas_corner():
    plan = plan_tiles(300, 200, tile=64, overlap=16, multiple=16)
    weights = tile_weights(plan)
    assert weights[0, 0, 0] == 1.0 and weights[-1, -1, -1] == 1.0


def test_crossfade_is_raised_cosine_over_the_uncropped_overlap():
    # Two tiles along x: origins 0 and 48 (tile 64, overlap 16), crop 4 LR px -> ramp over LR [52, 60).
    plan = plan_tiles(16, 112, tile=64, overlap=16, multiple=16)
    assert plan.xs == (0, 48)
    _, cols = axis_weights(plan)
    centres = np.arange(52 * SCALE, 60 * SCALE) + 0.5
    ramp = 0.5 - 0.5 * np.cos(np.pi * (centres - 52 * SCALE) / (8 * SCALE))
    np.testing.assert_allclose(cols[1, (52 - 48) * SCALE : (60 - 48) * SCALE], ramp, atol=1e-12)
    np.testing.assert_allclose(cols[0, 52 * SCALE : 60 * SCALE], 1.0 - ramp, atol=1e-12)


@pytest.mark.parametrize("length", [16, 64, 65 * 4, 100, 192, 304, 1008])
@pytest.mark.parametrize("tile,overlap", [(32, 0), (32, 8), (48, 16), (64, 32), (64, 48), (128, 16)])
def test_tile_count_is_minimal_and_overlaps_at_least_requested(length, tile, overlap):
    plan = plan_tiles(8, length, tile=tile, overlap=overlap, multiple=16)
    xs, width = np.array(plan.xs), plan.tile_w
    stride = width - overlap
    assert xs[0] == 0 and xs[-1] == plan.canvas_w - width
    if len(xs) == 1:
        assert width == plan.canvas_w
        return
    gaps = np.diff(xs)
    assert (gaps >= 1).all()  # strictly increasing: no duplicate origins
    assert (gaps <= stride).all()  # every neighbouring pair overlaps by at least `overlap`
    assert (gaps[:-1] == stride).all()  # only the last tile is clamped
    # One tile fewer at the full stride would not reach the end of the canvas.
    assert (len(xs) - 2) * stride + width < plan.canvas_w


def test_static_and_dynamic_canvases():
    small = plan_tiles(7, 3, tile=64, overlap=16, multiple=8)
    assert (small.canvas_h, small.canvas_w, small.tile_h, small.tile_w, small.origins) == (8, 8, 8, 8, ((0, 0),))
    small_static = plan_tiles(7, 3, tile=64, overlap=16, multiple=8, static=True)
    assert (small_static.canvas_h, small_static.canvas_w) == (64, 64)
    assert (small_static.tile_h, small_static.tile_w, small_static.origins) == (64, 64, ((0, 0),))

    strip = plan_tiles(50, 1000, tile=256, overlap=32, multiple=64)  # fits on one axis only
    assert (strip.canvas_h, strip.canvas_w, strip.tile_h, strip.tile_w) == (64, 1024, 64, 256)
    assert strip.ys == (0,) and strip.xs == (0, 224, 448, 672, 768)
    strip_static = plan_tiles(50, 1000, tile=256, overlap=32, multiple=64, static=True)
    assert (strip_static.canvas_h, strip_static.tile_h, strip_static.tile_w) == (256, 256, 256)
    assert strip_static.xs == strip.xs

    grid = plan_tiles(300, 200, tile=128, overlap=16, multiple=64)
    assert (grid.canvas_h, grid.canvas_w) == (320, 256)
    assert grid.ys == (0, 112, 192) and grid.xs == (0, 112, 128)
    assert grid.origins[:4] == ((0, 0), (0, 112), (0, 128), (112, 0))  # row-major
    assert grid.n_tiles == 9


@pytest.mark.parametrize("static", [False, True])
def test_tile_zero_runs_the_whole_canvas(static):
    plan = plan_tiles(300, 200, tile=0, overlap=500, multiple=64, static=static)  # overlap ignored
    assert (plan.canvas_h, plan.canvas_w, plan.tile_h, plan.tile_w) == (320, 256, 320, 256)
    assert plan.origins == ((0, 0),) and plan.overlap == 0
    assert (tile_weights(plan) == 1.0).all()


def test_tile_box_matches_origins():
    plan = plan_tiles(300, 200, tile=128, overlap=16, multiple=64)
    for k, (y, x) in enumerate(plan.origins):
        assert tile_box(plan, k) == (slice(y, y + 128), slice(x, x + 128))
        assert tile_box(plan, k, hr=True) == (slice(4 * y, 4 * y + 512), slice(4 * x, 4 * x + 512))


def test_hand_made_inconsistent_plan_is_refused():
    with pytest.raises(ValueError, match="origins"):
        TilePlan(lr_h=100, lr_w=100, canvas_h=128, canvas_w=128, tile_h=64, tile_w=64, overlap=16, scale=4,
                 origins=((0, 0), (0, 64)))  # x never reaches the end of the canvas


# --- padding map ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 10))
def test_reflect_indices_matches_numpy_reflect(n):
    values = np.arange(n) * 10
    for target in range(n, 4 * n + 12):  # includes pads longer than the side: repeated mirroring
        idx = reflect_indices(n, target)
        assert idx.dtype == np.int64 and idx.shape == (target,)
        np.testing.assert_array_equal(values[idx], np.pad(values, (0, target - n), mode="reflect"))


@pytest.mark.parametrize("n", [2, 3, 8, 17])
def test_reflect_indices_by_hand(n):
    for pad in range(n):  # single mirror, no repeated edge
        expected = np.concatenate([np.arange(n), np.arange(n - 2, n - 2 - pad, -1)])
        np.testing.assert_array_equal(reflect_indices(n, n + pad), expected)
    long = reflect_indices(n, 10 * n)
    assert long.min() == 0 and long.max() == n - 1
    assert (np.abs(np.diff(long)) == 1).all()  # bounces at both ends, never repeats an edge


def test_reflect_indices_single_pixel_replicates():
    np.testing.assert_array_equal(reflect_indices(1, 64), np.zeros(64, dtype=np.int64))


# --- local operators: tiled == whole image ----------------------------------------------------


def _nearest(lr: np.ndarray) -> np.ndarray:
    return lr.repeat(SCALE, axis=1).repeat(SCALE, axis=2)


def _blur_nearest(lr: np.ndarray) -> np.ndarray:
    """3×3 box blur (edge replicate: wrong at a tile border, like a network without context), then ×4."""
    padded = np.pad(lr, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = lr.shape[1:]
    blurred = sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / np.float32(9)
    return _nearest(blurred.astype(np.float32))


def _canvas(lr: np.ndarray, plan: TilePlan) -> np.ndarray:
    rows = reflect_indices(plan.lr_h, plan.canvas_h)
    cols = reflect_indices(plan.lr_w, plan.canvas_w)
    return lr[:, rows][:, :, cols]


def _run_tiled(lr, plan, op, batch=3):
    canvas = _canvas(lr, plan)
    acc = Accumulator(plan, channels=lr.shape[0])
    for indices in iter_batches(plan, batch):
        for k in indices:
            rows, cols = tile_box(plan, k)
            acc.add(k, op(canvas[:, rows, cols]))
    return acc.result()


def _run_whole(lr, plan, op):
    return op(_canvas(lr, plan))[:, : plan.lr_h * SCALE, : plan.lr_w * SCALE]


def _quantise(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


LOCAL_CASES = [
    # (lr_h, lr_w, tile, overlap, multiple, static)
    (1, 1, 32, 8, 16, True),
    (7, 3, 32, 8, 16, False),
    (65, 64, 32, 8, 16, False),
    (65, 64, 32, 8, 16, True),
    (100, 75, 48, 16, 16, False),
    (100, 75, 32, 24, 8, True),  # overlap > tile/2: several tiles cover a pixel
    (250, 188, 64, 32, 16, False),
    (250, 188, 128, 16, 64, True),
    (33, 120, 64, 4, 8, False),  # smallest overlap with a 1-px crop
]


@pytest.mark.parametrize("op", [_nearest, _blur_nearest], ids=["nearest", "blur3x3-nearest"])
@pytest.mark.parametrize("lr_h,lr_w,tile,overlap,multiple,static", LOCAL_CASES)
def test_local_operator_tiled_equals_whole_image(op, lr_h, lr_w, tile, overlap, multiple, static):
    rng = np.random.default_rng(lr_h * 1000 + lr_w)
    lr = (rng.integers(0, 256, size=(3, lr_h, lr_w)) / 255).astype(np.float32)
    plan = plan_tiles(lr_h, lr_w, tile=tile, overlap=overlap, multiple=multiple, static=static)
    tiled, whole = _run_tiled(lr, plan, op), _run_whole(lr, plan, op)
    assert tiled.dtype == np.float32 and tiled.shape == (3, lr_h * SCALE, lr_w * SCALE)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(_quantise(tiled), _quantise(whole))


def test_blur_without_border_crop_shows_seams():
    # The control for the test above: overlap 0 means no crop, so tile borders leak into the output.
    rng = np.random.default_rng(0)
    lr = rng.random((3, 100, 75), dtype=np.float32)
    plan = plan_tiles(100, 75, tile=32, overlap=0, multiple=16)
    assert plan.n_tiles > 1
    error = np.abs(_run_tiled(lr, plan, _blur_nearest) - _run_whole(lr, plan, _blur_nearest))
    assert error.max() > 1e-2


# --- accumulator and batches ------------------------------------------------------------------


def test_accumulator_refuses_missing_duplicate_and_misshapen_tiles():
    plan = plan_tiles(100, 100, tile=64, overlap=16, multiple=16)
    tile = np.ones((3, 256, 256), dtype=np.float32)
    acc = Accumulator(plan)
    for k in range(plan.n_tiles - 1):
        acc.add(k, tile)
    with pytest.raises(ValueError, match=rf"{plan.n_tiles - 1} of {plan.n_tiles} tiles were added"):
        acc.result()
    with pytest.raises(ValueError, match="already added"):
        acc.add(0, tile)
    with pytest.raises(ValueError, match=r"shape \(3, 256, 128\), expected \(3, 256, 256\)"):
        acc.add(plan.n_tiles - 1, tile[:, :, :128])
    with pytest.raises(IndexError):
        acc.add(plan.n_tiles, tile)
    acc.add(plan.n_tiles - 1, tile)
    np.testing.assert_allclose(acc.result(), 1.0, rtol=0, atol=1e-6)


def test_accumulator_divides_by_the_weight_sum(monkeypatch):
    # Weights that do not sum to 1 (as float rounding could make them) must not change a constant image.
    real = axis_weights

    def half_weights(plan):
        rows, cols = real(plan)
        return rows * 0.5, cols

    monkeypatch.setattr("gtasr_deploy.tiling.axis_weights", half_weights)
    plan = plan_tiles(100, 100, tile=64, overlap=16, multiple=16)
    acc = Accumulator(plan, channels=2)
    for k in range(plan.n_tiles):
        acc.add(k, np.full((2, 256, 256), 0.75, dtype=np.float32))
    np.testing.assert_allclose(acc.result(), 0.75, rtol=0, atol=1e-6)


def test_accumulator_memory_is_image_sized():
    plan = plan_tiles(130, 70, tile=32, overlap=8, multiple=16, static=True)
    acc = Accumulator(plan, channels=1)
    assert acc._sum.shape == (1, 130 * SCALE, 70 * SCALE)  # noqa: SLF001 - the memory bound is the contract


@pytest.mark.parametrize("n_tiles_side,batch", [(1, 1), (1, 4), (3, 1), (3, 4), (3, 9), (3, 50)])
def test_iter_batches(n_tiles_side, batch):
    plan = plan_tiles(8, 32 * n_tiles_side, tile=32, overlap=0, multiple=8)
    assert plan.n_tiles == n_tiles_side
    chunks = list(iter_batches(plan, batch))
    assert [k for chunk in chunks for k in chunk] == list(range(plan.n_tiles))
    assert all(len(chunk) == batch for chunk in chunks[:-1]) and 1 <= len(chunks[-1]) <= batch


# --- error wording ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tile=100, overlap=16, multiple=64),
         "tile 100 is not a multiple of the size rule 64; use 64 or 128 (or 0 for the whole image)"),
        (dict(tile=30, overlap=8, multiple=64),
         "tile 30 is not a multiple of the size rule 64; use 64 (or 0 for the whole image)"),
        (dict(tile=64, overlap=64, multiple=64), "overlap 64 must be smaller than tile 64; use e.g. overlap 16"),
        (dict(tile=128, overlap=200, multiple=64), "overlap 200 must be smaller than tile 128; use e.g. overlap 32"),
        (dict(tile=-64, overlap=16, multiple=64),
         "tile -64 must be an integer >= 0 LR px (0 runs the whole image as one tile)"),
        (dict(tile=64, overlap=-1, multiple=64), "overlap -1 must be an integer >= 0 LR px"),
        (dict(tile=0, overlap=-1, multiple=64), "overlap -1 must be an integer >= 0 LR px"),
        (dict(tile=64, overlap=16, multiple=0), "size rule 0 must be an integer >= 1"),
        (dict(tile=64.0, overlap=16, multiple=64),
         "tile 64.0 must be an integer >= 0 LR px (0 runs the whole image as one tile)"),
    ],
)
def test_config_error_wording(kwargs, message):
    with pytest.raises(ConfigError) as info:
        plan_tiles(100, 100, **kwargs)
    assert str(info.value) == message


def test_empty_image_and_bad_batch_errors():
    with pytest.raises(InputError, match=r"image size 0x5 LR px is empty"):
        plan_tiles(0, 5, tile=64, overlap=16, multiple=64)
    plan = plan_tiles(5, 5, tile=64, overlap=16, multiple=64)
    with pytest.raises(ConfigError, match=r"^batch 0 must be an integer >= 1$"):
        list(iter_batches(plan, 0))
