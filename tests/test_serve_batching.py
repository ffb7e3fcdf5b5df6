"""The tile batcher of gtasr-serve without Ray: merging rules, result routing, errors per group."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from gtasr_deploy.engines.base import Engine, EngineInfo
from gtasr_deploy.inference.options import UpscaleOptions
from gtasr_deploy.serve.batching import BatchedEngine, TileCall
from gtasr_deploy.upscaler import Upscaler


class _RecordingEngine:
    """Per-sample arithmetic (so routing mistakes show), records every call's batch size."""

    def __init__(self, max_batch: int = 64) -> None:
        self.info = SimpleNamespace(max_batch=max_batch, backend="fake")
        self.batches: list[tuple[str, int]] = []

    def __call__(self, *, x_t, lq, sigma, norm_stats=None):
        if lq.shape[-1] == 13:
            raise ValueError("13 px is unlucky")
        self.batches.append(("call", len(lq)))
        shift = 0.0 if norm_stats is None else float(norm_stats.sum())
        return x_t * 2 + sigma[:, None, None, None] + shift

    def tile_statistics(self, *, x_t, lq, sigma):
        self.batches.append(("stats", len(lq)))
        return lq.reshape(len(lq), 1, -1).mean(-1, keepdims=True).repeat(2, axis=1)


def _call(rng, n, h, w, method="__call__", norm_stats=None) -> TileCall:
    return TileCall(method, rng.normal(size=(n, 3, 4 * h, 4 * w)).astype(np.float32),
                    rng.normal(size=(n, 3, h, w)).astype(np.float32), rng.uniform(size=n).astype(np.float32),
                    norm_stats)


def _alone(engine, call: TileCall):
    fn = engine if call.method == "__call__" else getattr(engine, call.method)
    extra = {} if call.norm_stats is None else {"norm_stats": call.norm_stats}
    return fn(x_t=call.x_t, lq=call.lq, sigma=call.sigma, **extra)


def test_same_shapes_merge_and_each_request_gets_its_own_tiles():
    rng = np.random.default_rng(0)
    engine = _RecordingEngine()
    batched = BatchedEngine(engine, submit=None)
    calls = [_call(rng, 1, 8, 8), _call(rng, 2, 8, 8), _call(rng, 1, 16, 8), _call(rng, 1, 8, 8, "tile_statistics"),
             _call(rng, 2, 8, 8, "tile_statistics")]
    results = batched.run_calls(calls)
    merged = list(engine.batches)
    for call, result in zip(calls, results):
        np.testing.assert_array_equal(result, _alone(engine, call))
    assert sorted(merged) == [("call", 1), ("call", 3), ("stats", 3)]
    assert batched.stats.requests_merged == 2 and batched.stats.tiles == 7


def test_calls_with_different_pooled_statistics_never_share_a_pass():
    rng = np.random.default_rng(1)
    engine = _RecordingEngine()
    batched = BatchedEngine(engine, submit=None)
    one, two = np.zeros((2, 4), np.float32), np.ones((2, 4), np.float32)
    calls = [_call(rng, 1, 8, 8, norm_stats=one), _call(rng, 1, 8, 8, norm_stats=two),
             _call(rng, 1, 8, 8, norm_stats=one.copy())]
    results = batched.run_calls(calls)
    assert sorted(engine.batches) == [("call", 1), ("call", 2)]
    for call, result in zip(calls, results):
        np.testing.assert_array_equal(result, _alone(engine, call))


def test_the_engine_batch_limit_splits_a_merged_group():
    rng = np.random.default_rng(2)
    engine = _RecordingEngine(max_batch=2)
    batched = BatchedEngine(engine, submit=None)
    calls = [_call(rng, 1, 8, 8) for _ in range(5)]
    results = batched.run_calls(calls)
    assert engine.batches[:3] == [("call", 2), ("call", 2), ("call", 1)]
    for call, result in zip(calls, results):
        np.testing.assert_array_equal(result, _alone(engine, call))


def test_an_engine_error_goes_to_the_calls_of_its_group_only():
    rng = np.random.default_rng(3)
    batched = BatchedEngine(_RecordingEngine(), submit=None)
    good, bad = _call(rng, 1, 8, 8), _call(rng, 1, 8, 13)
    results = batched.run_calls([good, bad])
    assert isinstance(results[1], ValueError) and isinstance(results[0], np.ndarray)


def test_the_proxy_routes_tile_calls_to_submit_and_the_rest_to_the_engine():
    engine = _RecordingEngine()
    seen: list[TileCall] = []
    batched = BatchedEngine(engine, submit=lambda call: seen.append(call) or "queued")
    x = np.zeros((1, 3, 32, 32), np.float32)
    lq = np.zeros((1, 3, 8, 8), np.float32)
    assert batched(x_t=x, lq=lq, sigma=np.ones(1), norm_stats=np.ones((2, 3))) == "queued"
    assert batched.tile_statistics(x_t=x, lq=lq, sigma=1.0) == "queued"
    assert [c.method for c in seen] == ["__call__", "tile_statistics"]
    assert seen[1].sigma.shape == (1,) and seen[0].norm_stats.shape == (2, 3)
    assert batched.info.backend == "fake" and engine.batches == []


class _Nearest(Engine):
    """Nearest x4 of lq (a local operator), any shape."""

    def __init__(self) -> None:
        self.info = EngineInfo(backend="fake", device="cpu", precision="fp32", size_multiple=8, tile_lr=None,
                               batch_range=(1, 1, 4), norm_groups=1, norm_modes=("tile",))

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        return lq.repeat(4, axis=2).repeat(4, axis=3), None


def test_an_upscaler_over_the_proxy_sends_every_engine_call_through_submit():
    """The service's Upscaler is built over the proxy (Upscaler.with_engine), not patched."""
    model = Upscaler.from_engine(_Nearest(), UpscaleOptions(tile=16, tile_overlap=4, batch=2, norm="tile"))
    seen: list[TileCall] = []
    batched = BatchedEngine(model.engine, submit=lambda call: seen.append(call) or batched.run_calls([call])[0])
    served = model.with_engine(batched)
    image = np.random.default_rng(4).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert np.array_equal(served.upscale(image), model.upscale(image))
    assert seen and batched.stats.tiles == sum(call.tiles for call in seen) and model.engine is not batched
    assert served.pipeline.engine is batched and model.pipeline.engine is model.engine
