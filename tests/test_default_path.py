"""The default path: the whole image in one call when it fits, the fewest pixels when it does not,
a cheap statistics pass, the fastest runtime installed and its graph cache."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gtasr_deploy.engines.base import Engine, EngineInfo
from gtasr_deploy.engines.factory import choose_backend
from gtasr_deploy.errors import ConfigError
from gtasr_deploy.inference.pipeline import Pipeline, TilePolicy
from gtasr_deploy.tiling import choose_tile, default_overlap, downscale_factor, plan_tiles

SILENT = lambda _line: None  # noqa: E731


class StatsEngine(Engine):
    """Nearest x4 of lq plus the GroupNorm-like 'statistic' it normalises with: the sample's own mean
    (per-tile mode) or the pooled one (shared). Records every call's LR shape and mode."""

    def __init__(self, *, multiple=8, tile_lr=None, lr_max=None):
        self.info = EngineInfo(backend="fake", device="cpu", precision="fp32", size_multiple=multiple,
                               tile_lr=tile_lr, batch_range=(1, 1, 64), norm_groups=1, lr_max=lr_max)
        self.calls, self.shared_values, self.stats_means = [], [], []

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        self.calls.append(("stats" if want_stats else "shared" if norm_stats is not None else "own", lq.shape))
        mean = lq.mean(axis=(1, 2, 3))
        if norm_stats is not None:
            self.shared_values.append(float(norm_stats[0, 0]))
        if want_stats:
            self.stats_means.extend(float(v) for v in mean)
            return None, np.stack([mean, lq.var(axis=(1, 2, 3))], 1)[:, :, None].astype(np.float32)
        offset = mean if norm_stats is None else np.full_like(mean, norm_stats[0, 0])
        return (lq.repeat(4, axis=2).repeat(4, axis=3) - offset[:, None, None, None]).astype(np.float32), None


def _lq(h, w, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (3, h, w)).astype(np.float32)


def _canvas_px(h, w, m):
    return (-(-h // m) * m) * (-(-w // m) * m)


# --------------------------------------------------------------------------- pure tile choice

@pytest.mark.parametrize("h,w,m", [(300, 200, 16), (512, 384, 32), (384, 512, 64), (1000, 700, 16), (257, 3000, 32)])
def test_choose_tile_runs_the_whole_image_when_it_fits_and_the_fewest_pixels_when_not(h, w, m):
    canvas = _canvas_px(h, w, m)
    assert choose_tile(h, w, max_px=canvas, multiple=m) == (0, 0)
    for budget in (canvas - 1, canvas // 2, canvas // 4, canvas // 9):
        th, tw = choose_tile(h, w, max_px=budget, multiple=m)
        assert th % m == 0 and tw % m == 0 and th * tw <= budget
        plan = plan_tiles(h, w, tile=(th, tw), overlap=default_overlap((th, tw)), multiple=m)
        executed = plan.n_tiles * plan.tile_h * plan.tile_w
        # no square tile of the same budget runs fewer pixels
        side = int(budget ** 0.5) // m * m
        if side >= m:
            square = plan_tiles(h, w, tile=side, overlap=default_overlap(side), multiple=m)
            assert executed <= square.n_tiles * square.tile_h * square.tile_w


def test_an_image_four_times_larger_than_memory_runs_at_most_one_and_a_half_passes_per_pixel():
    """Tiles plus the downscaled statistics pass, over photo sizes and every size rule in use."""
    worst = 0.0
    for m in (16, 32, 64):
        for h in range(256, 2200, 97):
            for w in range(256, 2200, 131):
                canvas = _canvas_px(h, w, m)
                budget = canvas // 4
                tile = choose_tile(h, w, max_px=budget, multiple=m)
                plan = plan_tiles(h, w, tile=tile, overlap=default_overlap(tile), multiple=m)
                factor = max(2, downscale_factor(h, w, max_px=budget, multiple=m))
                stats_px = _canvas_px(-(-h // factor), -(-w // factor), m)
                assert stats_px <= budget
                worst = max(worst, (plan.n_tiles * plan.tile_h * plan.tile_w + stats_px) / canvas)
    assert worst <= 1.5


def test_no_tile_fits_is_a_clear_error():
    with pytest.raises(ConfigError, match="no tile fits"):
        choose_tile(300, 300, max_px=100, multiple=16)


# --------------------------------------------------------------------------- the pipeline's choice

def test_auto_runs_the_whole_image_in_one_call_when_it_fits():
    engine = StatsEngine()
    pipeline = Pipeline(engine, TilePolicy(tile=None), budget=lambda: 10**9)
    lq = _lq(61, 45)
    out = pipeline(lq)
    assert engine.calls == [("own", (1, 3, 64, 48))]  # padded to the size rule only
    cost = pipeline.cost(61, 45)
    assert cost.calls == 1 and cost.pixel_ratio <= 64 * 48 / (61 * 45) + 1e-9 <= 1.15
    whole = Pipeline(StatsEngine(), TilePolicy(tile=0))(lq)
    assert np.array_equal(out, whole)


def test_auto_without_a_known_budget_runs_the_whole_image():
    engine = StatsEngine()
    Pipeline(engine, TilePolicy(tile=None))(_lq(100, 80))
    assert len(engine.calls) == 1


def test_auto_tiles_an_image_too_large_with_a_cheap_statistics_pass():
    engine = StatsEngine()
    budget = 256 * 256 // 4
    notes = []
    pipeline = Pipeline(engine, TilePolicy(tile=None), budget=lambda: budget, log=notes.append)
    lq = _lq(256, 256)
    out = pipeline(lq)
    modes = [mode for mode, _ in engine.calls]
    assert modes[0] == "stats" and set(modes[1:]) == {"shared"}  # one statistics call, then every tile once
    assert all(shape[2] * shape[3] <= budget for _, shape in engine.calls)
    assert engine.calls[0][1][2:] == (128, 128)  # the image downscaled 2x
    cost = pipeline.cost(256, 256)
    assert cost.stats_factor == 2 and cost.passes == 1 and cost.calls == len(engine.calls)
    executed = sum(shape[2] * shape[3] for _, shape in engine.calls)
    assert executed == cost.executed_px and cost.pixel_ratio <= 1.5
    assert any("does not fit one call in memory" in note for note in notes)
    # every tile was normalised with one statistic: the downscaled pass's
    assert len(set(engine.shared_values)) == 1 and engine.shared_values[0] == pytest.approx(engine.stats_means[0])
    assert np.isfinite(out).all() and out.shape == (3, 1024, 1024)


@pytest.mark.parametrize("stats,expected_modes", [("tiles", {"stats", "shared"}), ("downscaled", {"stats", "shared"})])
def test_statistics_policies(stats, expected_modes):
    engine = StatsEngine()
    pipeline = Pipeline(engine, TilePolicy(tile=32, stats=stats), budget=lambda: None)
    pipeline(_lq(80, 80))
    modes = [mode for mode, _ in engine.calls]
    assert set(modes) == expected_modes
    cost = pipeline.cost(80, 80)
    n_tiles = cost.plan.n_tiles
    assert modes.count("stats") == (n_tiles if stats == "tiles" else cost.stats_plan.n_tiles) > 0
    assert modes.count("shared") == n_tiles and cost.calls == len(modes)


@pytest.mark.parametrize("stats", ["downscaled", "tiles"])
def test_static_graphs_and_given_tiles_cut_the_statistics_pass_into_the_same_tiles(stats):
    static = StatsEngine(tile_lr=(32, 32))
    pipeline = Pipeline(static, TilePolicy(tile=None, stats=stats), budget=lambda: 10)
    assert pipeline.policy.tile == 32
    out = pipeline(_lq(150, 150))
    assert all(shape[2:] == (32, 32) for _, shape in static.calls)
    cost = pipeline.cost(150, 150)
    n_stats = [m for m, _ in static.calls].count("stats")
    assert n_stats == (cost.stats_plan.n_tiles if stats == "downscaled" else cost.plan.n_tiles)
    assert n_stats < cost.plan.n_tiles or stats == "tiles"  # the downscaled image needs fewer tiles
    # an engine of any shape, given the same tile, computes the same picture
    given = StatsEngine()
    assert np.array_equal(Pipeline(given, TilePolicy(tile=32, stats=stats))(_lq(150, 150)), out)
    assert [(m, s) for m, s in given.calls] == [(m, s) for m, s in static.calls]


def test_an_engines_largest_shape_caps_the_whole_image():
    engine = StatsEngine(lr_max=(64, 64))
    Pipeline(engine, TilePolicy(tile=None), budget=lambda: None)(_lq(100, 60))
    assert all(shape[2] <= 64 and shape[3] <= 64 for _, shape in engine.calls)
    assert engine.calls[0][0] == "stats"


def test_per_tile_normalisation_has_no_statistics_pass():
    engine = StatsEngine()
    Pipeline(engine, TilePolicy(tile=None, norm="tile"), budget=lambda: 40 * 40)(_lq(96, 96))
    assert {m for m, _ in engine.calls} == {"own"}


# --------------------------------------------------------------------------- backend choice

def test_auto_backend_on_a_cpu_prefers_openvino_when_installed(monkeypatch):
    from gtasr_deploy.engines import factory

    monkeypatch.setattr(factory, "_openvino_usable", lambda needs_export: True)
    choice = choose_backend("auto", device="cpu")
    assert choice.backend == "openvino" and "fastest" in choice.reason
    assert choose_backend("auto", device="cpu", torch_options=True).backend == "torch"
    assert choose_backend("auto", device="cpu", precision="fp16").backend == "torch"
    assert choose_backend("torch", device="cpu").reason == "requested"
    monkeypatch.setattr(factory, "_openvino_usable", lambda needs_export: False)
    choice = choose_backend("auto", device="cpu")
    assert choice.backend == "torch" and "pip install 'gtasr-deploy[openvino]'" in choice.reason
    with pytest.raises(ConfigError, match="unknown backend"):
        choose_backend("cuda-magic", device="cpu")


# --------------------------------------------------------------------------- the graph cache

@pytest.fixture(scope="module")
def tiny_model(fixture_model):
    return fixture_model


def _cache(model, root, log=SILENT):
    from gtasr_deploy.export.cache import cached_graph

    return cached_graph(model, name="tiny", runtime="openvino", root=root, log=log)


@pytest.fixture(scope="module")
def filled_cache(tiny_model, tmp_path_factory):
    pytest.importorskip("openvino", reason="the graph cache runs OpenVINO (pip extra 'openvino')")
    root = tmp_path_factory.mktemp("graph-cache")
    entry = _cache(tiny_model, root)
    # A copy for the session's graph cache (GTASR_GRAPH_CACHE, tests/conftest.py): the same network under
    # the same name is what `gtasr-upscale --weights tiny` runs in test_weights_cli.py, which then reuses
    # it instead of exporting it once more (run alone, that test fills its own entry).
    shared = Path(os.environ["GTASR_GRAPH_CACHE"]) / entry.folder.name
    if not shared.exists():
        shutil.copytree(entry.folder, shared)
    return root, entry


def test_graph_cache_fills_once_and_is_reused(filled_cache, tiny_model):
    root, entry = filled_cache
    assert entry.filled_s is not None and entry.onnx_path.is_file()
    sidecar = json.loads(entry.onnx_path.with_suffix(".json").read_text())
    assert sidecar["tile_lr"] is None  # dynamic height and width
    again = _cache(tiny_model, root)
    assert again.filled_s is None and again.onnx_path == entry.onnx_path


def _export_by_copy(entry, calls: list):
    """A stand-in for the cache's export_onnx: the graph and sidecar that the real export wrote into the
    filled ``entry`` (same model, same settings), copied into the folder being rebuilt."""
    from gtasr_deploy.export.onnx import ExportResult

    def export(model, out_dir, *, name, **kwargs):
        calls.append((name, kwargs["tile_lr"], kwargs["verify_with"]))
        Path(out_dir).mkdir(parents=True)
        graph = Path(shutil.copy2(entry.onnx_path, Path(out_dir) / entry.onnx_path.name))
        sidecar = Path(shutil.copy2(entry.onnx_path.with_suffix(".json"), graph.with_suffix(".json")))
        return ExportResult(onnx_path=graph, sidecar_path=sidecar, sidecar=json.loads(sidecar.read_text()),
                            max_abs_error={})

    return export


@pytest.mark.slow  # "truncate" rebuilds the entry with a real export: ~35 s on 2 busy cores
@pytest.mark.parametrize("damage", ["truncate", "manifest", "foreign"])
def test_a_corrupt_or_foreign_cache_entry_is_rebuilt(filled_cache, tiny_model, tmp_path, monkeypatch, damage):
    """Each damage is found, the entry removed and filled again, and the new entry is then reused. One
    damage re-exports for real; the other two get the same graph copied in by a stand-in exporter (the
    rebuild logic is their subject, and a real export costs half a minute each)."""
    from gtasr_deploy.export import cache

    root, entry = filled_cache
    copy = tmp_path / "cache"
    shutil.copytree(root, copy)
    folder = copy / entry.folder.relative_to(root)
    graph = folder / entry.onnx_path.name
    if damage == "truncate":
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{not json")
    else:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["key"]["package"] = "0.0.0-elsewhere"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    calls: list = []
    if damage != "truncate":
        monkeypatch.setattr(cache, "export_onnx", _export_by_copy(entry, calls))
    notes = []
    rebuilt = _cache(tiny_model, copy, log=notes.append)
    assert rebuilt.filled_s is not None and any("rebuilding" in n for n in notes)
    assert rebuilt.folder == folder and rebuilt.onnx_path.is_file()
    assert calls == ([] if damage == "truncate" else [("tiny", None, "openvino")])
    assert _cache(tiny_model, copy).filled_s is None
    assert len(calls) == (0 if damage == "truncate" else 1)  # reused: no second export


def test_other_weights_get_their_own_entry(filled_cache, tiny_model):
    from gtasr_deploy.export.cache import cache_key, parameters_sha256

    root, entry = filled_cache
    key = cache_key(tiny_model, "openvino")
    assert key["parameters_sha256"] == parameters_sha256(tiny_model)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert parameters_sha256(other) != key["parameters_sha256"]


def test_the_cached_graph_runs_the_whole_image_like_torch(filled_cache, tiny_model):
    """OpenVINO fp32 on the cached dynamic graph vs the torch engine, whole images of mixed sizes."""
    from gtasr_deploy.engines.openvino import OpenVinoEngine
    from gtasr_deploy.engines.torch_engine import TorchEngine

    _, entry = filled_cache
    ov = OpenVinoEngine(entry.onnx_path, precision="fp32", cache_dir=entry.folder)
    assert ov.info.tile_lr is None
    m = ov.info.size_multiple
    for h, w in ((7, 5), (m, 3 * m), (2 * m + 3, m + 1)):
        a = Pipeline(ov, TilePolicy(tile=None), seed=3)(_lq(h, w, seed=h))
        b = Pipeline(TorchEngine(tiny_model), TilePolicy(tile=None), seed=3)(_lq(h, w, seed=h))
        assert np.abs(a - b).max() <= 1 / 255


def test_openvino_compiles_a_shape_of_its_own_only_where_the_call_is_long_enough(filled_cache, monkeypatch):
    """Small calls run on the dynamic model (compiled once, disk-cached); large ones on a model compiled
    for their shape; both compute the same picture."""
    from gtasr_deploy.engines import openvino
    from gtasr_deploy.engines.openvino import OpenVinoEngine, static_pays

    # the measured break-evens (engines/openvino.py): the paper network (172M weights) compiles its own
    # shape for a 320x256 photo but not for a 128x128 one; the demo network (1.8M) not for the samples
    assert static_pays(320 * 256, 172_000_000) and not static_pays(128 * 128, 172_000_000)
    assert not static_pays(256 * 384, 1_770_000) and static_pays(1024 * 1024, 1_770_000)
    _, entry = filled_cache
    ov = OpenVinoEngine(entry.onnx_path, precision="fp32", cache_dir=entry.folder)
    assert ov.weights > 0
    m = ov.info.size_multiple
    lq = _lq(2 * m, 3 * m, seed=5)
    monkeypatch.setattr(openvino, "STATIC_WORK", float("inf"))
    dynamic = Pipeline(ov, TilePolicy(tile=None), seed=3)(lq)
    assert ov._dynamic is not None and not ov._requests
    monkeypatch.setattr(openvino, "STATIC_WORK", 0.0)
    static = Pipeline(ov, TilePolicy(tile=None), seed=3)(lq)
    assert list(ov._requests) == [(1, 2 * m, 3 * m)]
    assert np.abs(dynamic - static).max() <= 1e-4


def test_auto_runs_calls_too_small_to_compile_for_on_torch(filled_cache, tiny_model, monkeypatch):
    """Under --backend auto, OpenVINO hands the calls too small to compile a shape for to torch (one-off
    calls are faster there than the dynamic model's first call); large calls stay on OpenVINO."""
    from gtasr_deploy.engines import openvino
    from gtasr_deploy.engines.openvino import OpenVinoEngine
    from gtasr_deploy.engines.torch_engine import TorchEngine

    class Counting(TorchEngine):
        calls = 0

        def _run(self, *args):
            Counting.calls += 1
            return super()._run(*args)

    _, entry = filled_cache
    ov = OpenVinoEngine(entry.onnx_path, precision="fp32", cache_dir=entry.folder,
                        small_calls=Counting(tiny_model, precision="fp32"))
    m = ov.info.size_multiple
    lq = _lq(2 * m, 3 * m, seed=6)
    monkeypatch.setattr(openvino, "STATIC_WORK", float("inf"))
    small = Pipeline(ov, TilePolicy(tile=None), seed=3)(lq)
    assert Counting.calls == 1 and ov._dynamic is None and not ov._requests
    monkeypatch.setattr(openvino, "STATIC_WORK", 0.0)
    large = Pipeline(ov, TilePolicy(tile=None), seed=3)(lq)
    assert Counting.calls == 1 and list(ov._requests) == [(1, 2 * m, 3 * m)]
    assert np.abs(small - large).max() <= 1 / 255


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from gtasr_deploy.paths import cache_root, graph_cache_root

    monkeypatch.setenv("GTASR_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("GTASR_CACHE")
    assert cache_root() == Path.home() / ".cache" / "gtasr_deploy"
    monkeypatch.delenv("GTASR_GRAPH_CACHE", raising=False)
    assert graph_cache_root() == cache_root() / "graphs"


# --------------------------------------------------------------------------- precision auto, measured

def test_auto_precision_needs_bf16_that_is_measured_faster():
    from gtasr_deploy.engines.precision import choose_precision

    flags = {"avx512f", "avx512_bf16"}
    slow = choose_precision("auto", device="cpu", backend="openvino", features=flags, bf16_speedup=0.5)
    assert slow.precision == "fp32" and "0.50x" in slow.reason and "AVX512-BF16" in slow.reason
    fast = choose_precision("auto", device="cpu", backend="torch", features=flags, bf16_speedup=1.6)
    assert fast.precision == "bf16" and "1.6x" in fast.reason
    assert choose_precision("bf16", device="cpu", backend="torch", features=flags, bf16_speedup=0.5).precision == "bf16"
    assert choose_precision("auto", device="cpu", backend="torch", features={"avx2"}, bf16_speedup=3.0).precision == "fp32"


def test_the_bf16_measurement_is_cached_and_a_corrupt_cache_is_measured_again(tmp_path, monkeypatch):
    from gtasr_deploy.engines import precision

    timings = iter([0.2, 0.1, 0.9, 0.3])  # fp32, bf16, then again after the corruption
    monkeypatch.setattr(precision, "_time_matmul", lambda dtype, **_: next(timings))
    cache = tmp_path / "cpu_bf16.json"
    assert precision.measured_bf16_speedup({"avx512_bf16"}, cache=cache) == pytest.approx(2.0)
    assert precision.measured_bf16_speedup({"avx512_bf16"}, cache=cache) == pytest.approx(2.0)  # no new timing
    cache.write_text("{truncated")
    assert precision.measured_bf16_speedup({"avx512_bf16"}, cache=cache) == pytest.approx(3.0)
    data = json.loads(cache.read_text())
    data["key"]["cpu"] = "another CPU"
    cache.write_text(json.dumps(data))
    with pytest.raises(StopIteration):  # a foreign entry is not trusted: it measures again
        precision.measured_bf16_speedup({"avx512_bf16"}, cache=cache)
