"""gtasr-bench: percentile maths, MAC counting, row schema, skip reasons, reports, CLI (never latencies)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gtasr_deploy.bench import cost, report, runner, timing
from gtasr_deploy.errors import BackendUnavailableError, ConfigError

TINY = "tests/data/upstream_tiny/network_g.json"  # fixture config: size rule 8, builds in milliseconds


# ---------------------------------------------------------------------------- percentile / stats


def test_percentile_by_hand():
    assert timing.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)  # rank 1.5 between 2 and 3
    assert timing.percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7·(4 − 3)
    assert timing.percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert timing.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert timing.percentile([7.0], 90) == 7.0


@pytest.mark.parametrize("q", [0, 10, 37.5, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = np.random.default_rng(3).exponential(size=11)
    assert timing.percentile(list(values), q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        timing.percentile([], 50)
    with pytest.raises(ValueError):
        timing.percentile([1.0], 101)


def test_latency_stats_from_samples():
    stats = timing.LatencyStats.from_samples([0.3, 0.1, 0.2, 0.5, 0.4])
    assert (stats.min_s, stats.median_s, stats.mean_s) == (0.1, 0.3, pytest.approx(0.3))
    assert stats.p90_s == pytest.approx(0.46)
    assert stats.samples_s == (0.3, 0.1, 0.2, 0.5, 0.4)  # call order kept


def test_time_calls_counts_calls():
    calls = []
    stats = timing.time_calls(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and len(stats.samples_s) == 3


def test_matmul_peaks_per_library():
    peaks = timing.matmul_peaks(size=64, repeat=2)
    assert set(peaks) == {"torch", "numpy", "torch_conv1x1"} and all(v > 0 for v in peaks.values())
    assert timing.matmul_peak_gflops(size=64, repeat=2) > 0
    with pytest.raises(ConfigError, match="precision"):
        timing.matmul_peaks(precision="int8")


def test_cpu_snapshot_other_load_is_non_negative():
    start = timing.cpu_snapshot()
    sum(i * i for i in range(200_000))
    end = timing.cpu_snapshot()
    if start is None:
        pytest.skip("no /proc/stat on this OS")
    assert timing.other_processes_cores(start, end) >= 0.0


# ---------------------------------------------------------------------------- MAC counting


def test_count_macs_matches_hand_computed_conv_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    x = torch.zeros(2, 3, 10, 12)
    expected = 2 * 10 * 12 * (8 * 3 * 3 * 3)  # 3×3 conv: every output px, 8 outputs × 27 inputs
    expected += 2 * 10 * 12 * (4 * 8)  # 1×1 conv
    expected += 2 * 4 * 5  # linear
    assert cost.count_macs(net, x) == expected


def test_model_macs_scale_with_batch_and_paper_sanity():
    one = cost.count_model_macs("demo", tile_lr=(32, 32))
    assert one > 0
    assert cost.count_model_macs("demo", tile_lr=(32, 32), batch=3) == 3 * one
    # SPEC §6: ≈153 GMAC per 64×64 LR input for the paper network
    assert cost.count_model_macs("paper", tile_lr=(64, 64)) / 1e9 == pytest.approx(153.2, rel=0.01)
    assert cost.count_model_params("paper") == 171_518_529  # SPEC §2


def test_roofline_projection_is_compute_or_weight_bound():
    rows = cost.roofline_projection(10**12, param_count=10**8)
    assert {r["gpu"] for r in rows} == {g.name for g in cost.GPU_PEAKS}
    for r in rows:
        assert r["compute_bound_s"] == pytest.approx(2e12 / (r["peak_tflops"] * 1e12))
        assert r["floor_s"] == max(r["compute_bound_s"], r["weight_traffic_s"])
        assert r["floor_vs_paper"] == pytest.approx(r["floor_s"] / 0.08)


# ---------------------------------------------------------------------------- rows


def _scenario(**overrides):
    fields = dict(preset="custom", network=TINY, weights=None, backend="torch", precision="fp32", tile=8, batch=1,
                  warmup=0, repeat=2, threads=1, device="cpu", cache_dir="unused", matmul_size=64)
    fields.update(overrides)
    return runner.Scenario(**fields)


@pytest.fixture(scope="module")
def lr_photo(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("lr") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_time_model_row_schema(lr_photo):
    row = runner.time_model(_scenario(images=(lr_photo,)))
    report.validate_row(row)
    assert row["status"] == "ok" and row["reason"] is None
    lat = row["latency"]
    assert len(lat["samples_s"]) == 2 and lat["min_s"] <= lat["median_s"] <= lat["p90_s"]
    assert row["gmacs_per_call"] * 1e9 == cost.count_model_macs(TINY, tile_lr=(8, 8))
    assert row["achieved_gflops"] == pytest.approx(2 * row["gmacs_per_call"] / lat["median_s"])
    assert row["fraction_of_matmul_peak"] == pytest.approx(row["achieved_gflops"] / row["matmul_peak_gflops"])
    assert row["throughput_mpix_s"] == pytest.approx(32 * 32 / lat["median_s"] / 1e6)
    assert row["versions"]["torch"] and row["git"].keys() == {"revision", "dirty"}
    e2e = row["e2e"]
    assert e2e["images"] == 1 and e2e["output_lr_px"] == 13 * 21
    # the CLI's default: the whole 13x21 image, padded to the size rule (16x24), in one call
    assert e2e["tile"] == "auto" and e2e["norm"] == "shared" and e2e["tiles"] == 1
    assert e2e["calls"] == e2e["network_passes"] == 1 and e2e["statistics_calls"] == 0
    assert e2e["executed_lr_px"] == 16 * 24 and e2e["executed_over_output_px"] == pytest.approx(16 * 24 / (13 * 21))
    assert e2e["model_only_s"] == pytest.approx(lat["median_s"])
    assert e2e["whole_image_call_s"] > 0 and e2e["pipeline_over_whole_call"] > 0
    parts = e2e["decode_s"] + e2e["tiling_blend_s"] + e2e["model_s"] + e2e["encode_s"]
    assert parts == pytest.approx(e2e["total_s"])
    json.dumps(row)  # JSON-serialisable as it is


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("lr") / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("norm, photo, tiles, statistics", [
    ("tile", "lr_photo", 15, 0),  # per-tile statistics: one pass
    ("shared", "lr_photo", 15, 1),  # shared: one statistics call on the image downscaled 3x (5x7 in one 8x8 call)
    ("shared", "small_photo", 1, 0),  # one tile: nothing to share
])
def test_folder_run_counts_tiles_and_passes(request, monkeypatch, norm, photo, tiles, statistics):
    """Memory for one 8x8 LR tile per call: the 13x21 photo (16x24 padded) is cut into 3x5 tiles."""
    from gtasr_deploy.engines.torch_engine import TorchEngine
    monkeypatch.setattr(runner, "memory_budget", lambda device, model: lambda: 64)
    scenario = _scenario(images=(request.getfixturevalue(photo),), batch=2, norm=norm)
    e2e = runner.run_folder(TorchEngine(runner.load_network(scenario)), scenario, model_median_s=0.5)
    assert e2e["norm"] == norm and e2e["tiles"] == tiles and e2e["statistics_calls"] == statistics
    assert e2e["calls"] == -(-tiles // 2) + statistics  # batches of 2 tiles; one call per batch
    assert e2e["network_passes"] == tiles + statistics
    assert e2e["executed_lr_px"] == (tiles + statistics) * 64 or tiles == 1
    assert e2e["model_only_s"] == pytest.approx(e2e["calls"] * 0.5)


def test_cached_graph_from_an_older_export_is_exported_again(tmp_path, monkeypatch):
    """A cached graph whose sidecar the engines refuse (format 1: no GroupNorm statistics I/O) is
    re-exported by ``prepare``, not handed to the engine; a current one is reused."""
    import hashlib

    from gtasr_deploy import contract
    from gtasr_deploy.export import onnx as export_module

    scenario = _scenario(backend="onnxruntime", cache_dir=str(tmp_path))
    target = runner.graph_path(scenario)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"graph of an older gtasr-export")

    def sidecar(**over):
        data = {"format": contract.FORMAT, "onnx_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                "tile_lr": None, "lr_range": {"min": [8, 8], "opt": [8, 8], "max": [64, 64]}, "size_multiple": 8,
                "batch": {"min": 1, "opt": 1, "max": 1},
                "precision": "fp32", "opset": 18, "scale": 4, "norm_groups": 3, **over}
        return {k: v for k, v in data.items() if v is not None or k == "tile_lr"}

    contract.sidecar_path_for(target).write_text(json.dumps(sidecar(format="gtasr-onnx/1", norm_groups=None)))
    calls = []

    def fake_export(model, out_dir, *, name, tile_lr, batch_max, **kwargs):
        calls.append((Path(out_dir), name, tile_lr, batch_max))
        target.write_bytes(b"graph with the statistics I/O")
        side = sidecar()
        contract.sidecar_path_for(target).write_text(json.dumps(side))
        return export_module.ExportResult(onnx_path=target, sidecar_path=contract.sidecar_path_for(target),
                                          sidecar=side, max_abs_error={1: 0.0})

    monkeypatch.setattr(runner, "export_onnx", fake_export)
    assert runner.ensure_graph(scenario, log=lambda _: None) == target
    assert calls == [(target.parent, runner.graph_name(scenario), None, 1)]
    assert runner.ensure_graph(scenario, log=lambda _: None) == target and len(calls) == 1  # now reused


def test_validate_row_names_the_problem():
    row = report.skipped_row(_scenario(), "no GPU here")
    report.validate_row(row)
    with pytest.raises(ValueError, match="missing keys"):
        report.validate_row({k: v for k, v in row.items() if k != "device"})
    with pytest.raises(ValueError, match="needs a reason"):
        report.validate_row({**row, "reason": ""})
    with pytest.raises(ValueError, match="lacks figures"):
        report.validate_row({**row, "status": "ok"})


def test_unavailable_backends_have_reasons(monkeypatch):
    reason = runner.unavailable_reason("tensorrt", "cpu")
    assert reason and "GPU" in reason
    row = runner.run_scenario(_scenario(backend="tensorrt"))
    assert row["status"] == "skipped" and row["reason"] == reason

    def missing():
        raise BackendUnavailableError("onnxruntime backend: not installed; pip install 'gtasr-deploy[onnx]'")

    monkeypatch.setattr(runner, "import_onnxruntime", missing)
    assert "gtasr-deploy[onnx]" in runner.unavailable_reason("onnxruntime", "cpu")
    if not torch.cuda.is_available():
        assert "cuda" in runner.unavailable_reason("torch", "cuda").lower()


# ---------------------------------------------------------------------------- reports


def _fake_ok(backend, median, *, preset="paper", tile=128, e2e=None):
    scenario = _scenario(preset=preset, network=preset, backend=backend, tile=tile)
    stats = timing.LatencyStats.from_samples([median, median * 1.1, median * 0.95])
    return report.result_row(scenario, engine_device="cpu", stats=stats, macs=int(613e9), params=171518529,
                             matmul_peaks={"torch": 150.0, "numpy": 140.0}, matmul_precision="fp32",
                             peak_rss_bytes=2**30, device_memory={}, e2e=e2e, load_start=None, load_end=None)


def _fake_report():
    e2e = {"images": 2, "overlap": 16, "norm": "shared", "tiles": 4, "network_passes": 8, "passes_per_tile": 2.0,
           "calls": 8, "statistics_calls": 4, "partial_batches": 0, "decode_s": 0.1, "tiling_blend_s": 0.2,
           "model_s": 80.0, "encode_s": 0.5, "total_s": 80.8, "model_only_s": 80.0,
           "overhead_vs_model_only": 80.8 / 80.0 - 1, "executed_lr_px": 131072, "output_lr_px": 61440,
           "executed_over_output_px": 131072 / 61440}
    rows = [_fake_ok("torch", 10.0), _fake_ok("onnxruntime", 8.0, e2e=e2e),
            report.skipped_row(_scenario(preset="paper", network="paper", backend="tensorrt", tile=128),
                               "TensorRT needs an NVIDIA GPU")]
    env = {"device": "cpu", "device_name": "CPU Test", "threads": 1, "cpu_count": 2, "platform": "test",
           "versions": {"torch": "x"}, "git": {"revision": "abc", "dirty": False}, "load_average_start": (0.1, 0, 0)}
    costs, projection = [{"preset": "paper", "tile": 128, "params": 171518529, "gmacs": 613.0}], []
    return report.build_report({"environment": env, "rows": rows}, costs=costs, projection=projection,
                               command="gtasr-bench --test")


def test_paper_comparison_and_targets():
    built = _fake_report()
    paper = {p["backend"]: p for p in built["paper_comparison"]}
    assert paper["torch"]["ratio_to_paper"] == pytest.approx(10.0 / 0.08)
    assert not paper["onnxruntime"]["like_for_like"] and "NOT like-for-like" in paper["onnxruntime"]["label"]
    targets = {t["target"]: t for t in built["targets"]}
    speed = targets["fastest backend (onnxruntime) speed-up vs torch eager"]
    assert speed["value"] == pytest.approx(10.0 / 8.0) and speed["met"]
    peak = targets["fastest backend (onnxruntime) vs matmul peak"]
    assert peak["value"] == pytest.approx(2 * 613 / 8.0 / 150.0) and peak["met"]  # best library peak: 150
    e2e = targets["end-to-end overhead vs model-only (onnxruntime)"]
    assert e2e["value"] == pytest.approx(0.01) and e2e["met"]
    slow = report.check_targets([_fake_ok("torch", 10.0), _fake_ok("onnxruntime", 9.5)])
    assert [t["met"] for t in slow] == [False, False]  # 129/150 = 0.86 < 0.9; 10/9.5 = 1.05 < 1.15
    assert report.check_targets([_fake_ok("torch", 1.0, preset="demo")]) == []  # targets are for paper only


def test_markdown_lists_everything():
    text = report.render_markdown(_fake_report())
    assert "Regenerate: `gtasr-bench --test`" in text
    assert "| paper | tensorrt | fp32 | 128 | 1 | skipped | TensorRT needs an NVIDIA GPU |" in text
    assert "NOT like-for-like" in text and "End to end" in text and "+1.0%" in text
    assert text.count("| paper | torch | fp32 | 128 | 1 |") == 1
    # e2e row: norm, images, tiles, calls (statistics calls included), total s; whole-image columns
    assert "| paper | onnxruntime | fp32 | 1 | shared | 2 | 4 | 8 | 80.8 |" in text
    assert "| norm | images | tiles | calls | total s |" in text and "one whole-image call s" in text


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = report.write_plot(_fake_report(), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(BackendUnavailableError, match=r"gtasr-deploy\[bench\]"):
        report.write_plot(_fake_report(), tmp_path / "plot.png")


# ---------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_demo_end_to_end(tmp_path):
    from gtasr_deploy.cli.bench import main

    out, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    result = CliRunner().invoke(main, [
        "--preset", "demo", "--backends", "torch,tensorrt", "--tile", "32", "--batch", "1", "--warmup", "0",
        "--repeat", "1", "--threads", "1", "--device", "cpu", "--matmul-size", "128", "--cache-dir",
        str(tmp_path / "cache"), "--out", str(out), "--markdown", str(md), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    built = json.loads(out.read_text())
    by_backend = {r["backend"]: r for r in built["rows"]}
    assert by_backend["torch"]["status"] == "ok" and by_backend["torch"]["e2e"]["calls"] >= 1
    assert by_backend["tensorrt"]["status"] == "skipped" and by_backend["tensorrt"]["reason"]
    for row in built["rows"]:
        report.validate_row(row)
    assert md.read_text() in result.output  # the printed numbers are the written ones
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert built["command"].startswith("gtasr-bench --preset demo --backends torch,tensorrt")


def test_cli_rejects_tile_off_the_size_rule():
    from gtasr_deploy.cli.bench import main

    result = CliRunner().invoke(main, ["--preset", "paper", "--tile", "96", "--backends", "torch"])
    assert result.exit_code == 2
    assert "--tile [96]" in result.output and "size rule 64" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without CUDA")
@pytest.mark.parametrize("command", ["bench", "upscale"])
def test_cuda_device_without_cuda_is_a_one_line_usage_error(tmp_path, command):
    from gtasr_deploy.cli import bench as bench_cli
    from gtasr_deploy.cli import upscale as upscale_cli

    if command == "bench":
        result = CliRunner().invoke(bench_cli.main, ["--preset", "demo", "--backends", "torch", "--tile", "64",
                                                     "--device", "cuda", "--no-e2e"])
    else:
        result = CliRunner().invoke(upscale_cli.main, [str(Path(__file__).parent.parent / "samples"), str(tmp_path / "out"), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda: CUDA is not available here" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_failed_scenario_exits_1_and_bad_output_paths_fail_before_running(tmp_path):
    from gtasr_deploy.cli.bench import main

    notes = tmp_path / "notes.pth"
    notes.write_text("not weights")
    common = ["--preset", "demo", "--backends", "torch", "--precision", "fp32", "--tile", "32", "--warmup", "0",
              "--repeat", "1", "--threads", "1", "--device", "cpu", "--matmul-size", "16", "--no-e2e",
              "--cache-dir", str(tmp_path / "c")]  # one scenario: --precision auto may add a bf16 row
    result = CliRunner().invoke(main, [*common, "--weights", str(notes)])
    assert result.exit_code == 1, result.output
    assert "1 scenario(s) failed" in result.output and "notes.pth" in result.output
    blocked = notes / "r.json"  # under a file
    for option in ("--out", "--markdown", "--plot"):
        result = CliRunner().invoke(main, [*common, option, str(blocked)])
        assert result.exit_code == 2 and f"{option} {blocked}: cannot write there" in result.output, result.output
        assert "[gtasr-bench]" not in result.output  # refused before any scenario ran
