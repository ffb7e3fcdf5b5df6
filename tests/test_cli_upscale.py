"""`gtasr-upscale` end to end with the fixture checkpoint (a smoke test of the path, not of quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gtasr_deploy.cli.upscale import main

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json")]


@pytest.fixture()
def two_images(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (13, 9, 3), dtype=np.uint8)).save(src / "b photo.jpg")
    return src


def test_folder_of_two_images_gives_two_x4_pngs(two_images, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(two_images), str(out), "-q", *WEIGHTS])
    assert result.exit_code == 0, result.output
    assert Image.open(out / "a.png").size == (112, 80)
    assert Image.open(out / "b photo_jpg.png").size == (36, 52)  # tagged: not a PNG input
    # same seed → same bytes; re-run skips existing outputs
    first = (out / "a.png").read_bytes()
    again = CliRunner().invoke(main, [str(two_images), str(out), "-q", *WEIGHTS])
    assert again.exit_code == 0 and "0 written, 2 skipped" in again.output
    (out / "a.png").unlink()
    CliRunner().invoke(main, [str(two_images), str(out), "-q", *WEIGHTS])
    assert (out / "a.png").read_bytes() == first


def test_tiled_and_batched_runs_agree(two_images, tmp_path):
    runs = {}
    for name, extra in {"b1": ["--tile", "8", "--tile-overlap", "4"],
                        "b4": ["--tile", "8", "--tile-overlap", "4", "--batch", "4"]}.items():
        result = CliRunner().invoke(main, [str(two_images), str(tmp_path / name), "-q", *WEIGHTS, *extra])
        assert result.exit_code == 0, result.output
        runs[name] = np.asarray(Image.open(tmp_path / name / "a.png"), dtype=np.int16)
    assert np.abs(runs["b1"] - runs["b4"]).max() <= 1


def test_scale_other_than_4_is_a_usage_error(two_images, tmp_path):
    result = CliRunner().invoke(main, [str(two_images), str(tmp_path / "o"), "--scale", "2", *WEIGHTS])
    assert result.exit_code == 2
    assert "x4 only" in result.output


def test_missing_weights_without_embedded_default(two_images, tmp_path, monkeypatch):
    import gtasr_deploy.inference.loader as loader

    monkeypatch.setattr(loader, "EMBEDDED_WEIGHTS", tmp_path / "nope.safetensors")
    result = CliRunner().invoke(main, [str(two_images), str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no weights given and no embedded default weights" in result.output
    assert "Traceback" not in result.output


def test_bad_weights_file_is_one_line(two_images, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, [str(two_images), str(tmp_path / "o"), "--weights", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and str(bad) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_tile_names_both_values(two_images, tmp_path):
    result = CliRunner().invoke(main, [str(two_images), str(tmp_path / "o"), *WEIGHTS, "--tile", "12"])
    assert result.exit_code == 2
    assert "tile 12 is not a multiple of the size rule 8" in result.output


def test_mixed_folder_end_to_end(tmp_path):
    """Issue 8 done-when, through the real CLI and model: every case, exact outputs/messages/exit code."""
    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    (src / "sub dir").mkdir(parents=True)
    rgb = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "photo.jpg")
    Image.fromarray(rgb).save(src / "photo.png")  # collides with photo.jpg's natural output name
    Image.fromarray(np.dstack([rgb, np.full((12, 10), 128, np.uint8)])).save(src / "sub dir" / "alpha ü.png")
    Image.fromarray(rgb[..., 0]).save(src / "gray.png")
    import cv2

    cv2.imwrite(str(src / "deep16.png"), rng.integers(0, 65535, (8, 8, 3)).astype(np.uint16))
    (src / "empty.png").write_bytes(b"")
    (src / "notes.png").write_text("not an image")
    good = (src / "photo.png").read_bytes()
    (src / "trunc.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / "huge.png")
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, [str(src), str(out), "-q", *WEIGHTS, "--max-pixels", "1000",
                                       "--json", str(report)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4
    for name in ("empty.png", "notes.png", "trunc.png", "huge.png"):
        assert sum(name in line for line in errors) == 1
    assert "Traceback" not in result.output
    assert "5 written, 0 skipped (done), 4 failed" in result.output
    assert Image.open(out / "photo.png").size == (40, 48)
    assert Image.open(out / "photo_jpg.png").size == (40, 48)
    with Image.open(out / "sub dir" / "alpha ü.png") as im:
        assert im.mode == "RGBA" and im.size == (40, 48)
    with Image.open(out / "gray.png") as im:
        assert im.mode == "L"
    deep = cv2.imread(str(out / "deep16.png"), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (32, 32, 3)
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and ".gtasr" not in p.parts) == sorted(
        ["photo.png", "photo_jpg.png", "alpha ü.png", "gray.png", "deep16.png"])
    import json

    files = json.loads(report.read_text())["files"]
    assert sorted(f["status"] for f in files) == ["failed"] * 4 + ["written"] * 5


def test_output_folder_equal_to_input_folder_does_not_upscale_its_own_results(two_images):
    args = [str(two_images), str(two_images), "-q", "--suffix", "_x4", *WEIGHTS]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "2 written" in first.output, first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 written, 2 skipped" in again.output, again.output
    assert sorted(p.name for p in two_images.iterdir()) == [".gtasr", "a.png", "a_x4.png", "b photo.jpg",
                                                            "b photo_jpg_x4.png"]


def test_unreadable_subfolder_is_reported_and_fails_the_run(two_images, tmp_path, monkeypatch):
    import os

    import gtasr_deploy.batch.runner as batch

    real_walk = os.walk

    def walk(top, onerror=None, **kw):  # as if in/locked could not be listed (root reads everything)
        if onerror is not None:  # the video search walks too, without onerror
            onerror(PermissionError(13, "Permission denied", str(Path(top) / "locked")))
        yield from real_walk(top, onerror=onerror, **kw)

    monkeypatch.setattr(batch.os, "walk", walk)
    result = CliRunner().invoke(main, [str(two_images), str(tmp_path / "out"), "-q", *WEIGHTS])
    assert result.exit_code == 1 and "2 written" in result.output
    assert f"error: {two_images / 'locked'}: cannot list folder (Permission denied)" in result.output


def test_bad_numbers_devices_and_report_paths_are_usage_errors_before_any_work(two_images, tmp_path):
    out = tmp_path / "out"
    blocked = two_images / "a.png" / "report.json"  # a path under a file: cannot be created
    for extra, message in [(["--threads", "0"], "--threads"), (["--max-pixels", "-1"], "--max-pixels"),
                           (["--device", "bogus"], "is not a device"), (["--json", str(blocked)], "cannot write there"),
                           (["--onnx", str(tmp_path / "g.onnx")], "--weights is not used with --onnx")]:
        result = CliRunner().invoke(main, [str(two_images), str(out), "-q", *WEIGHTS, *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    assert not out.exists() or not any(out.glob("*.png"))
