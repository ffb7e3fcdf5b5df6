"""The tiled pipeline: determinism, batch invariance, local-operator exactness, no seams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gtasr_deploy.engines.base import Engine, EngineInfo
from gtasr_deploy.errors import ConfigError
from gtasr_deploy.inference.pipeline import Pipeline, TilePolicy


def TileOptions(*, tile, overlap, batch=1, shared_norm=False, stats="tiles"):  # noqa: N802 - reads like the policy
    return TilePolicy(tile=tile, overlap=overlap, batch=batch, norm="shared" if shared_norm else "tile", stats=stats)


def upscale_tensor(engine, lq, *, options, seed=0, progress=None):
    return Pipeline(engine, options, seed=seed)(lq, progress=progress)


class NearestEngine(Engine):
    """A local operator in place of the network: nearest x4 upsample of lq (ignores x_t)."""

    def __init__(self, multiple=8, tile_lr=None):
        self.info = EngineInfo(backend="fake", device="cpu", precision="fp32", size_multiple=multiple,
                               tile_lr=tile_lr, batch_range=(1, 1, 16), norm_groups=1, norm_modes=("tile",))
        self.calls = []

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        self.calls.append(lq.shape)
        return lq.repeat(4, axis=2).repeat(4, axis=3), None


def _lq(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(3, h, w)).astype(np.float32)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 37), (30, 20), (61, 90)])
@pytest.mark.parametrize("tile,overlap,static", [(0, 0, False), (16, 8, False), (32, 8, True), (16, 4, True)])
def test_local_operator_tiled_equals_whole(h, w, tile, overlap, static):
    lq = _lq(h, w)
    engine = NearestEngine(tile_lr=(tile, tile) if static and tile else None)
    out = upscale_tensor(engine, lq, options=TileOptions(tile=tile, overlap=overlap, batch=3))
    expected = np.clip((lq.repeat(4, 1).repeat(4, 2) + 1) / 2, 0, 1)
    assert out.shape == (3, 4 * h, 4 * w)
    assert np.abs(out - expected).max() <= 1e-6
    assert np.array_equal(np.rint(out * 255), np.rint(expected * 255))
    if static and tile:
        assert all(s[2:] == (tile, tile) for s in engine.calls)


def test_batch_is_respected_and_progress_reported():
    engine = NearestEngine()
    seen = []
    upscale_tensor(engine, _lq(40, 40), options=TileOptions(tile=16, overlap=8, batch=4),
                   progress=lambda d, t: seen.append((d, t)))
    assert max(s[0] for s in engine.calls) <= 4
    assert seen[-1][0] == seen[-1][1] == sum(s[0] for s in engine.calls)


def test_static_engine_rejects_mismatched_tile_shape():
    engine = NearestEngine(tile_lr=(16, 16))
    with pytest.raises(Exception, match="static tiles of 16x16"):
        engine(x_t=np.zeros((1, 3, 128, 128), np.float32), lq=np.zeros((1, 3, 32, 32), np.float32),
               sigma=np.ones(1, np.float32))


def test_bad_tile_options_name_both_values():
    with pytest.raises(ConfigError, match="overlap 16 must be smaller than tile 16"):
        upscale_tensor(NearestEngine(), _lq(20, 20), options=TileOptions(tile=16, overlap=16))
    with pytest.raises(ConfigError, match="tile 12 is not a multiple of the size rule 8"):
        upscale_tensor(NearestEngine(), _lq(20, 20), options=TileOptions(tile=12, overlap=4))


@pytest.fixture(scope="module")
def fixture_engine(fixture_model):
    from gtasr_deploy.engines.torch_engine import TorchEngine

    return TorchEngine(fixture_model)


def test_deterministic_and_batch_invariant(fixture_engine):
    lq = _lq(40, 56, seed=3)
    opts = dict(tile=16, overlap=8)
    a = upscale_tensor(fixture_engine, lq, options=TileOptions(**opts, batch=1), seed=7)
    b = upscale_tensor(fixture_engine, lq, options=TileOptions(**opts, batch=1), seed=7)
    c = upscale_tensor(fixture_engine, lq, options=TileOptions(**opts, batch=5), seed=7)
    d = upscale_tensor(fixture_engine, lq, options=TileOptions(**opts, batch=1), seed=8)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() <= 1e-4
    assert np.abs(a - d).max() > 1e-2  # the seed matters


def test_whole_image_run_equals_direct_denoiser_call(fixture_model, fixture_engine):
    """--tile 0 is exactly D(up(lq) + eps, 1, lq) on the padded image, cropped."""
    from gtasr_deploy.model.schedule import unit_noise, up

    lq = _lq(16, 24, seed=5)  # already a multiple of the size rule (8): no padding
    out = upscale_tensor(fixture_engine, lq, options=TileOptions(tile=0, overlap=0), seed=11)
    lq_t = torch.from_numpy(lq)[None]
    x_k = up(lq_t) + unit_noise((1, 3, 64, 96), 11)
    with torch.no_grad():
        ref = ((fixture_model(x_k, 1.0, lq_t)[0] + 1) / 2).clamp(0, 1).numpy()
    assert np.abs(out - ref).max() <= 1e-5


def _border_peak_ratio(diff: np.ndarray) -> float:
    """max/median of the mean abs gradient per column and per row of a difference image."""
    g = np.abs(diff).mean(axis=0)
    cols = np.abs(np.diff(g, axis=1)).mean(axis=0)
    rows = np.abs(np.diff(g, axis=0)).mean(axis=1)
    return max(cols.max() / np.median(cols), rows.max() / np.median(rows))


def test_no_seams_with_fixture_network(fixture_engine):
    """Tiled − whole shows no peaks at tile borders (a hard cut gives ~3.8x, feathering ~1.8x)."""
    rng = np.random.default_rng(0)
    # a smooth, photo-like LR image: low-frequency noise
    base = rng.uniform(-1, 1, size=(3, 12, 12)).astype(np.float32)
    lq = torch.nn.functional.interpolate(torch.from_numpy(base)[None], size=(96, 96), mode="bicubic")[0].numpy()
    lq = np.clip(lq, -1, 1)
    whole = upscale_tensor(fixture_engine, lq, options=TileOptions(tile=0, overlap=0), seed=0)
    feathered = upscale_tensor(fixture_engine, lq, options=TileOptions(tile=48, overlap=16, batch=4), seed=0)
    hard = upscale_tensor(fixture_engine, lq, options=TileOptions(tile=48, overlap=0, batch=4), seed=0)
    ratio_feather = _border_peak_ratio(feathered - whole)
    ratio_hard = _border_peak_ratio(hard - whole)
    assert ratio_feather < 2.5, ratio_feather
    assert ratio_hard > ratio_feather  # the metric does see a hard cut


def test_shared_statistics_of_one_tile_reproduce_the_plain_forward(fixture_model):
    """Pooled statistics of a single input are its own: normalising with them must give the normal output."""
    from gtasr_deploy.engines.torch_engine import TorchEngine
    from gtasr_deploy.model.shared_norm import pool_statistics

    rng = np.random.default_rng(0)
    feeds = {"x_t": rng.standard_normal((1, 3, 64, 96), dtype=np.float32),
             "lq": rng.uniform(-1, 1, (1, 3, 16, 24)).astype(np.float32), "sigma": np.ones(1, np.float32)}
    engine = TorchEngine(fixture_model)
    ref = engine(**feeds)
    stats = engine.tile_statistics(**feeds)
    assert stats.shape == (1, 2, engine.info.norm_groups) and engine.info.norm_groups > 10
    replayed = engine(**feeds, norm_stats=pool_statistics(stats))
    assert np.array_equal(engine(**feeds), ref)  # the statistics pass leaves the model as it was
    assert np.abs(replayed - ref).max() < 1e-4
    assert not np.allclose(engine(**feeds, norm_stats=pool_statistics(stats) * 1.5), ref, atol=1e-3)


def test_pool_statistics_is_the_variance_of_the_union():
    """Equal-size groups: pooled (mean, var) of per-tile (mean, var) equals the statistics of all values."""
    from gtasr_deploy.model.shared_norm import pool_statistics

    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, (5, 4, 100))  # 5 tiles, 4 groups, 100 values each
    tiles = np.stack([values.mean(-1), values.var(-1)], 1)
    pooled = pool_statistics(tiles)
    union = values.transpose(1, 0, 2).reshape(4, -1)
    assert np.allclose(pooled[0], union.mean(-1), atol=1e-5) and np.allclose(pooled[1], union.var(-1), rtol=1e-5)


def test_shared_norm_brings_tiles_closer_to_the_whole_image():
    """With trained weights on a photo whose per-tile GroupNorm offsets dominate the tiled − whole
    difference (the demo run's weights, embedded until the photos run replaced them: its weights differ
    less between tiled and whole, MSE 3.5e-5, and other effects share that), statistics pooled over
    the tiles must remove most of it (measured: MSE x0.11), and those of the downscaled image some of
    it (x0.78 on this 128-px crop)."""
    from gtasr_deploy.engines.torch_engine import TorchEngine
    from gtasr_deploy.model import load_model

    from PIL import Image

    run1 = Path(__file__).parents[1] / "training" / "init" / "gtasr_demo_run1.safetensors"
    engine = TorchEngine(load_model(run1))  # fp32
    photo = Path(__file__).parents[1] / "samples" / "chelsea_lr.png"  # a real photo (CC0)
    rgb = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32)[:128, :128] / 255
    lq = np.ascontiguousarray(rgb.transpose(2, 0, 1)) * 2 - 1
    whole = upscale_tensor(engine, lq, options=TileOptions(tile=0, overlap=0), seed=0)
    plain = upscale_tensor(engine, lq, options=TileOptions(tile=64, overlap=16, batch=4), seed=0)
    shared = upscale_tensor(engine, lq, options=TileOptions(tile=64, overlap=16, batch=4, shared_norm=True), seed=0)
    err_plain, err_shared = np.mean((plain - whole) ** 2), np.mean((shared - whole) ** 2)
    assert err_shared < 0.5 * err_plain, (err_plain, err_shared)
    # statistics of the image downscaled 2x (one 64-px call here) also bring the tiles closer
    cheap = upscale_tensor(engine, lq, options=TileOptions(tile=64, overlap=16, shared_norm=True, stats="downscaled"))
    assert np.mean((cheap - whole) ** 2) < err_plain
    again = upscale_tensor(engine, lq, options=TileOptions(tile=64, overlap=16, batch=1, shared_norm=True), seed=0)
    assert np.abs(again - shared).max() <= 1e-4  # batch-independent too


def test_shared_norm_is_refused_by_an_engine_that_does_not_declare_it():
    with pytest.raises(ConfigError, match="cannot share GroupNorm statistics"):
        upscale_tensor(NearestEngine(), _lq(40, 40), options=TileOptions(tile=16, overlap=4, shared_norm=True))
