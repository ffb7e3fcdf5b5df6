"""Output sizes other than x4: size maths, the resize (dtype, range, alpha, gray, antialiasing),
the batch path (16-bit and alpha through the resize) and the CLI options and usage errors."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gtasr_deploy.batch.runner import collect_inputs, plan_outputs, run_batch
from gtasr_deploy.cli.upscale import main
from gtasr_deploy.errors import InputError
from gtasr_deploy.media.resize import MAX_SIDE, OutputSize, resize_image, resize_planes

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json"),
           "--no-shared-norm"]
RNG = np.random.default_rng(7)


def nearest_x4(rgb):
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


# ---------------------------------------------------------------------------------- size maths


@pytest.mark.parametrize("spec, size, expected", [
    (OutputSize(), (28, 20), (112, 80)),
    (OutputSize(outscale=4), (28, 20), (112, 80)),
    (OutputSize(outscale=2), (28, 20), (56, 40)),
    (OutputSize(outscale=1.5), (27, 13), (41, 20)),  # 40.5 -> 41, 19.5 -> 20: half rounds up
    (OutputSize(outscale=8), (9, 13), (72, 104)),
    (OutputSize(outscale=0.01), (30, 20), (1, 1)),  # never below 1 px
    (OutputSize(width=1920), (1000, 750), (1920, 1440)),
    (OutputSize(height=1080), (1000, 750), (1440, 1080)),
    (OutputSize(long_side=3840), (750, 1000), (2880, 3840)),
    (OutputSize(long_side=50), (28, 20), (50, 36)),
])
def test_target_sizes(spec, size, expected):
    assert spec.target(*size) == expected


@pytest.mark.parametrize("width, height", [(640, 480), (333, 1000), (1000, 70), (1, 1)])
def test_targets_keep_the_aspect_ratio_within_rounding(width, height):
    for spec in (OutputSize(width=1234), OutputSize(height=777), OutputSize(long_side=2048),
                 OutputSize(outscale=2.7)):
        out_w, out_h = spec.target(width, height)
        # The computed side is the exact one rounded: off by at most half a pixel (plus the 1 px floor).
        assert abs(out_w / out_h - width / height) <= (width / height) * (0.5 / min(out_w, out_h)) + 1e-9 \
            or min(out_w, out_h) == 1


def test_bad_output_sizes_are_input_errors():
    with pytest.raises(InputError, match="one output size"):
        OutputSize(outscale=2, width=100)
    for bad in (dict(outscale=0), dict(outscale=-1), dict(outscale=float("inf")), dict(outscale=float("nan")),
                dict(width=0), dict(long_side=12.5)):
        with pytest.raises(InputError, match="is not"):
            OutputSize(**bad)
    with pytest.raises(InputError, match="per side"):
        OutputSize(outscale=1000).target(100, 100)
    assert OutputSize(width=MAX_SIDE).target(MAX_SIDE, 10) == (MAX_SIDE, 10)


def test_describe_says_what_is_done():
    assert OutputSize(outscale=8).describe() == "outscale 8: x4 by the model, then x2 Lanczos"
    assert "x0.5 antialiased Lanczos downscale" in OutputSize(outscale=2).describe()
    assert "no resize" in OutputSize(outscale=4).describe()
    assert "height from the aspect ratio" in OutputSize(width=1920).describe()


# ---------------------------------------------------------------------------------- the resize


@pytest.mark.parametrize("size", [(17, 9), (80, 44)])  # shrink (Pillow) and enlarge (OpenCV)
def test_dtype_and_range_are_kept(size):
    u8 = RNG.integers(0, 256, (22, 40, 3), dtype=np.uint8)
    u16 = RNG.integers(0, 65536, (22, 40, 3), dtype=np.uint16)
    f32 = RNG.random((22, 40), dtype=np.float32)
    for pixels in (u8, u16, f32):
        out = resize_image(pixels, size)
        assert out.dtype == (np.float32 if pixels.dtype == np.float32 else pixels.dtype)
        assert out.shape == (size[1], size[0], *pixels.shape[2:])
        if out.dtype == np.float32:
            assert 0.0 <= out.min() and out.max() <= 1.0  # Lanczos overshoot clipped
    # 16-bit stays 16-bit: a smooth 16-bit ramp keeps levels between the 8-bit ones.
    ramp = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (8, 1))
    out16 = resize_image(ramp, (150, 3))
    assert np.count_nonzero(out16 % 257) > out16.size // 2


def test_same_size_is_returned_unchanged():
    pixels = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert resize_image(pixels, (6, 5)) is pixels


@pytest.mark.parametrize("period", [2.2, 2.5, 3.3])
def test_shrinking_is_antialiased(period):
    # Stripes finer than the new pixel grid, shrunk x1/4: an antialiased filter leaves flat
    # mid-gray; a kernel that is not widened aliases them into coarse false stripes (moiré).
    x = np.arange(128, dtype=np.float32)
    stripes = np.tile(0.5 + 0.5 * np.sin(2 * np.pi * x / period), (16, 1)).astype(np.float32)
    small = resize_image(stripes, (32, 4))
    assert small[1, 2:-2].std() < 0.01 and abs(small.mean() - 0.5) < 0.01
    plain = cv2.resize(stripes, (32, 4), interpolation=cv2.INTER_LANCZOS4)
    assert plain[1, 2:-2].std() > 0.1  # the check above can fail: OpenCV's Lanczos aliases here


def test_flat_stays_flat_and_a_ramp_stays_a_ramp():
    flat = np.full((12, 16, 3), 0.25, np.float32)
    for size in ((5, 4), (64, 48)):
        assert np.allclose(resize_image(flat, size), 0.25, atol=1e-5)
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (16, 1))
    half = resize_image(ramp, (32, 8))
    assert np.all(np.diff(half[4, 2:-2]) > 0)
    assert np.allclose(half[:, 2:-2], (ramp[:8, 4:-4:2] + ramp[:8, 5:-3:2]) / 2, atol=0.01)


@pytest.mark.parametrize("size", [(13, 7), (104, 56)])
def test_alpha_and_gray_follow_the_colour_exactly(size):
    edge = np.zeros((28, 52), np.float32)
    edge[:, 20:] = 1.0
    edge[9:15] = 0.5
    gray_rgb = np.repeat(edge[..., None], 3, axis=2)
    rgb, alpha = resize_planes(gray_rgb, edge, size)
    assert rgb.shape == (size[1], size[0], 3) and alpha.shape == (size[1], size[0])
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])  # gray stays gray
    assert np.allclose(alpha, rgb[..., 0], atol=1e-6)  # same kernel: edges aligned
    assert resize_planes(gray_rgb, None, size)[1] is None


# ---------------------------------------------------------------------------------- batch path


def _run(src_dir: Path, out: Path, spec: OutputSize, **options):
    jobs = plan_outputs(collect_inputs(src_dir), out)
    summary = run_batch(jobs, nearest_x4, output_size=spec, progress=False, err=io.StringIO(), **options)
    return jobs, summary


def test_batch_resizes_16bit_and_alpha(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    ramp = np.linspace(0, 65535, 30 * 20).reshape(20, 30).astype(np.uint16)
    rgba16 = np.stack([ramp, ramp[::-1], ramp[:, ::-1], np.full_like(ramp, 40000)], axis=-1)
    assert cv2.imwrite(str(src / "deep.png"), rgba16[..., [2, 1, 0, 3]])
    Image.fromarray(RNG.integers(0, 256, (11, 7, 2), dtype=np.uint8), mode="LA").save(src / "gray.png")
    jobs, summary = _run(src, tmp_path / "out", OutputSize(outscale=1.5))
    assert summary.written == 2, summary.records
    by_name = {job.src.name: job.dst for job in jobs}
    deep = cv2.imread(str(by_name["deep.png"]), cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and deep.shape == (30, 45, 4)
    assert np.count_nonzero(deep % 257) > deep.size // 2  # 16-bit precision, not 8-bit steps
    assert np.abs(deep[..., 3].astype(int) - 40000).max() <= 1  # alpha resized, not dropped
    with Image.open(by_name["gray.png"]) as gray:
        assert gray.mode == "LA" and gray.size == (11, 17)  # 10.5 -> 11, 16.5 -> 17
    records = {Path(r.input).name: r for r in summary.records}
    assert records["deep.png"].output_size == (45, 30) and records["deep.png"].input_size == (30, 20)


def test_batch_too_large_target_fails_that_file_before_the_model(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(RNG.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(src / "a.png")
    calls = []

    def counting_sr(rgb):
        calls.append(1)
        return nearest_x4(rgb)

    jobs = plan_outputs(collect_inputs(src), tmp_path / "out")
    summary = run_batch(jobs, counting_sr, output_size=OutputSize(width=MAX_SIDE + 1), progress=False,
                        err=io.StringIO())
    assert summary.failed == 1 and not calls and "per side" in summary.records[0].reason


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture()
def photo(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(src / "a.png")
    return src


@pytest.mark.parametrize("option, value, expected", [
    ("--outscale", "2", (56, 40)), ("--outscale", "8", (224, 160)), ("--width", "70", (70, 50)),
    ("--height", "10", (14, 10)), ("--long-side", "50", (50, 36))])
def test_cli_output_size_options(photo, tmp_path, option, value, expected):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(photo), str(out), *WEIGHTS, option, value])
    assert result.exit_code == 0, result.output
    [written] = [p for p in out.iterdir() if p.is_file()]
    with Image.open(written) as im:
        assert im.size == expected
    if option == "--outscale" and value == "8":
        assert "outscale 8: x4 by the model, then x2 Lanczos" in result.output


@pytest.mark.parametrize("extra, message", [
    (["--outscale", "2", "--width", "100"], "--outscale and --width exclude each other"),
    (["--height", "5", "--long-side", "9"], "--height and --long-side exclude each other"),
    (["--outscale", "nan"], "--outscale nan"),
    (["--outscale", "inf"], "--outscale inf"),
    (["--outscale", "0"], "--outscale"),
    (["--width", "0"], "--width"),
])
def test_cli_bad_output_sizes_are_usage_errors_before_any_work(photo, tmp_path, extra, message):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, [str(photo), str(out), *WEIGHTS, *extra])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_cli_help_states_the_new_options():
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for needle in ("--outscale", "--width", "--height", "--long-side", "--strip-metadata", "Lanczos",
                   "16-bit", "exclude each other"):
        assert needle in text


@pytest.mark.parametrize("name, fmt", [("single.png", "PNG"), ("single.JPG", "JPEG"), ("x.webp", "WEBP"),
                                       ("deep/x.tif", "TIFF")])
def test_single_input_with_image_suffix_writes_that_file(photo, tmp_path, name, fmt):
    target = tmp_path / "o" / name
    result = CliRunner().invoke(main, [str(photo / "a.png"), str(target), *WEIGHTS, "-q"])
    assert result.exit_code == 0, result.output
    assert target.is_file()
    with Image.open(target) as im:
        assert im.format == fmt and im.size == (112, 80)
    assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == [target.name]


def test_folder_input_with_image_suffix_output_is_a_usage_error(photo, tmp_path):
    target = tmp_path / "out.png"
    result = CliRunner().invoke(main, [str(photo), str(target), *WEIGHTS])
    assert result.exit_code == 2 and "is a folder" in result.output and not target.exists()


def test_single_output_format_conflict_and_existing_folder(photo, tmp_path):
    result = CliRunner().invoke(main, [str(photo / "a.png"), str(tmp_path / "o.png"), *WEIGHTS, "--format", "jpg"])
    assert result.exit_code == 2 and "contradicts" in result.output
    folder = tmp_path / "looks.png"  # an existing folder stays a folder
    folder.mkdir()
    result = CliRunner().invoke(main, [str(photo / "a.png"), str(folder), *WEIGHTS, "-q"])
    assert result.exit_code == 0, result.output
    assert [p.suffix for p in folder.iterdir() if p.is_file()] == [".png"]


def test_single_output_that_is_the_input_or_with_a_suffix_is_a_usage_error(photo, tmp_path):
    before = (photo / "a.png").read_bytes()
    result = CliRunner().invoke(main, [str(photo / "a.png"), str(photo / "a.png"), *WEIGHTS, "--overwrite"])
    assert result.exit_code == 2 and "is INPUT itself" in result.output
    assert (photo / "a.png").read_bytes() == before
    result = CliRunner().invoke(main, [str(photo / "a.png"), str(tmp_path / "o.png"), *WEIGHTS, "--suffix", "_x4"])
    assert result.exit_code == 2 and "--suffix" in result.output and not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------------- area vs --max-pixels


@pytest.mark.parametrize("spec", [OutputSize(outscale=100), OutputSize(width=500), OutputSize(height=400),
                                  OutputSize(long_side=65_535), OutputSize(outscale=4.5)])
@pytest.mark.parametrize("size", [(16, 16), (7, 300), (300, 7)])
def test_a_target_over_max_pixels_by_area_is_refused_whatever_the_option(spec, size):
    width, height = spec.target(*size)
    limit = width * height - 1
    with pytest.raises(InputError, match="over --max-pixels"):
        spec.target(*size, max_pixels=limit)
    assert spec.target(*size, max_pixels=limit + 1) == (width, height)  # exactly at the limit: fine
    assert spec.target(*size, max_pixels=0) == (width, height)  # 0: no limit


def _folder(tmp_path, sizes: dict[str, tuple[int, int]]) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name, (w, h) in sizes.items():
        Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / name)
    return src


@pytest.mark.parametrize("extra", [["--long-side", "65535"], ["--outscale", "1000"], ["--width", "60000"],
                                   ["--height", "20000"], ["--outscale", "9", "--max-pixels", "15000"]])
def test_cli_no_input_can_fit_is_a_usage_error_before_any_work(tmp_path, extra):
    src = _folder(tmp_path, {"a.png": (16, 16), "b.png": (16, 12)})
    out = tmp_path / "never"
    result = CliRunner().invoke(main, [str(src), str(out), *WEIGHTS, *extra])
    assert result.exit_code == 2, result.output
    assert "no input can be made that size" in result.output and "over --max-pixels" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_cli_inputs_that_cannot_fit_fail_one_by_one_and_the_rest_are_written(tmp_path):
    # 10x10 -> 80x80 = 6,400 px fits 10,000; 9x12 -> 72x96 = 6,912 fits; 40x40 -> 320x320 does not
    src = _folder(tmp_path, {"a.png": (10, 10), "b.png": (40, 40), "c.png": (9, 12)})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(src), str(out), *WEIGHTS, "--outscale", "8", "--max-pixels", "10000",
                                       "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "b.png" in errors[0] and "over --max-pixels 10,000" in errors[0]
    assert "1 failed" in result.output
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.png", "c.png"]


def test_batch_checks_the_area_before_decoding(tmp_path, monkeypatch):
    """A too-large target fails from the header alone: the pixels are never decoded or resized."""
    import gtasr_deploy.batch.runner as batch_mod

    src = _folder(tmp_path, {"a.png": (16, 16)})
    decoded = []
    monkeypatch.setattr(batch_mod, "read_image", lambda *a, **k: decoded.append(a) or None)
    summary = run_batch(plan_outputs(collect_inputs(src), tmp_path / "out"), nearest_x4,
                        output_size=OutputSize(long_side=65_535), progress=False, err=io.StringIO())
    assert summary.failed == 1 and not decoded and "over --max-pixels" in summary.records[0].reason


def test_a_size_the_output_format_cannot_hold_fails_before_the_model(tmp_path):
    """WebP holds 16,383 px per side: a 4,200 px wide strip at x4 fails at once, as webp, and is written as png."""
    src = _folder(tmp_path, {"strip.png": (4200, 2)})
    calls = []

    def counting_sr(rgb):
        calls.append(1)
        return nearest_x4(rgb)

    jobs = plan_outputs(collect_inputs(src), tmp_path / "out", fmt="webp")
    summary = run_batch(jobs, counting_sr, progress=False, err=io.StringIO())
    assert summary.failed == 1 and not calls and "over 16,383 px per side" in summary.records[0].reason
    summary = run_batch(plan_outputs(collect_inputs(src), tmp_path / "out"), counting_sr, progress=False,
                        err=io.StringIO())
    assert summary.written == 1 and calls == [1]
