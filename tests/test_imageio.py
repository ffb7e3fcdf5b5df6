"""Decoding every supported kind of file, encoding with the right mode/depth/alpha/ICC, atomicity.

Every file is generated here with Pillow/OpenCV/numpy; no binary fixtures.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from gtasr_deploy.media import images as imageio
from gtasr_deploy.errors import InputError
from gtasr_deploy.media.images import read_image, upscale_alpha, write_image

RNG = np.random.default_rng(1234)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def u8(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def u16(shape):
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def save_pil(path: Path, array: np.ndarray, mode: str | None = None, **options) -> Path:
    image = PILImage.fromarray(array, mode=mode) if mode else PILImage.fromarray(array)
    image.save(path, **options)
    return path


def save_cv2_16(path: Path, rgb16: np.ndarray) -> Path:
    """Write 16-bit RGB(A) with OpenCV (Pillow cannot make 16-bit colour files)."""
    bgr = rgb16[..., [2, 1, 0, 3][: rgb16.shape[2]]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def add_png_orientation(path: Path, orientation: int) -> None:
    """Insert an eXIf chunk right after IHDR (offset 33) into an existing PNG."""
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    data = path.read_bytes()
    path.write_bytes(data[:33] + png_chunk(b"eXIf", exif.tobytes()[6:]) + data[33:])


# ---------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(("ext", "options", "fmt"), [
    (".png", {}, "png"), (".webp", {"lossless": True}, "webp"), (".bmp", {}, "bmp"),
    (".tif", {}, "tiff"), (".tiff", {"compression": "tiff_lzw"}, "tiff")])
def test_lossless_rgb_formats_decode_exactly(tmp_path, ext, options, fmt):
    pixels = u8((6, 9, 3))
    image = read_image(save_pil(tmp_path / f"a{ext}", pixels, **options))
    assert image.rgb.dtype == np.float32 and image.rgb.shape == (6, 9, 3)
    np.testing.assert_array_equal(np.rint(image.rgb * 255), pixels)
    assert (image.alpha, image.bit_depth, image.is_gray, image.source_format) == (None, 8, False, fmt)
    assert image.size == (9, 6)


def test_jpeg_decodes_close_to_source(tmp_path):
    pixels = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    image = read_image(save_pil(tmp_path / "a.JPG", pixels, quality=100))
    assert image.source_format == "jpeg" and image.bit_depth == 8
    assert np.abs(image.rgb * 255 - pixels).max() <= 3


def test_gray_and_gray_alpha(tmp_path):
    gray = u8((5, 7))
    image = read_image(save_pil(tmp_path / "g.png", gray))
    assert image.is_gray and image.alpha is None
    for c in range(3):
        np.testing.assert_array_equal(np.rint(image.rgb[..., c] * 255), gray)
    la = u8((5, 7, 2))
    image = read_image(save_pil(tmp_path / "la.png", la, mode="LA"))
    assert image.is_gray
    np.testing.assert_array_equal(np.rint(image.rgb[..., 1] * 255), la[..., 0])
    np.testing.assert_array_equal(np.rint(image.alpha * 255), la[..., 1])


def test_rgba_alpha_is_separate_plane(tmp_path):
    rgba = u8((4, 6, 4))
    image = read_image(save_pil(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(np.rint(image.rgb * 255), rgba[..., :3])
    np.testing.assert_array_equal(np.rint(image.alpha * 255), rgba[..., 3])
    assert image.alpha.dtype == np.float32 and not image.is_gray


def test_palette_with_and_without_transparency(tmp_path):
    palette_image = PILImage.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    palette_image.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert image.alpha is None
    np.testing.assert_array_equal(np.rint(image.rgb[0, 0] * 255), [255, 0, 0])
    np.testing.assert_array_equal(np.rint(image.rgb[1, 0] * 255), [0, 0, 255])
    palette_image.save(tmp_path / "pt.png", transparency=1)
    image = read_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(image.alpha, [[1.0, 0.0], [1.0, 0.0]])


def test_16bit_gray_png_keeps_full_precision(tmp_path):
    gray = u16((5, 7))
    image = read_image(save_pil(tmp_path / "g16.png", gray))
    assert image.bit_depth == 16 and image.is_gray and image.alpha is None
    np.testing.assert_array_equal(np.rint(image.rgb[..., 2] * 65535), gray)
    exif = PILImage.Exif()
    exif[0x0112] = 3  # rotate 180
    image = read_image(save_pil(tmp_path / "g16r.png", gray, exif=exif))
    assert image.bit_depth == 16
    np.testing.assert_array_equal(np.rint(image.rgb[..., 0] * 65535), gray[::-1, ::-1])


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_keeps_full_precision(tmp_path, ext, channels):
    pixels = u16((5, 7, channels))
    image = read_image(save_cv2_16(tmp_path / f"c16{ext}", pixels))
    assert image.bit_depth == 16 and not image.is_gray
    np.testing.assert_array_equal(np.rint(image.rgb * 65535), pixels[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(np.rint(image.alpha * 65535), pixels[..., 3])
    else:
        assert image.alpha is None


def test_16bit_gray_alpha_png_round_trip(tmp_path):
    gray, alpha = u16((4, 5)), u16((4, 5))
    rgb = np.repeat((gray / 65535.0).astype(np.float32)[..., None], 3, axis=2)
    write_image(tmp_path / "ga16.png", rgb, alpha=(alpha / 65535.0).astype(np.float32), is_gray=True,
                bit_depth=16)
    decoded = cv2.imread(str(tmp_path / "ga16.png"), cv2.IMREAD_UNCHANGED)  # independent decoder
    np.testing.assert_array_equal(decoded[..., 0], gray)
    np.testing.assert_array_equal(decoded[..., 3], alpha)
    image = read_image(tmp_path / "ga16.png")
    assert image.is_gray and image.bit_depth == 16
    np.testing.assert_array_equal(np.rint(image.alpha * 65535), alpha)


def test_cmyk_jpeg_becomes_rgb_and_drops_the_cmyk_profile(tmp_path):
    cyan = np.zeros((16, 16, 4), np.uint8)
    cyan[..., 0] = 255
    PILImage.fromarray(cyan, mode="CMYK").save(tmp_path / "c.jpg", quality=100, icc_profile=SRGB_ICC)
    image = read_image(tmp_path / "c.jpg")
    assert image.rgb.shape == (16, 16, 3) and image.icc_profile is None
    assert np.abs(image.rgb * 255 - np.array([0, 255, 255])).max() <= 3


def test_exif_orientation_is_applied_to_jpeg(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = 255  # left half white
    exif = PILImage.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    PILImage.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "r.jpg")
    assert image.size == (16, 32)
    assert image.rgb[:16].mean() > 0.95 and image.rgb[16:].mean() < 0.05  # left -> top


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(orientation):
    pixels = u8((3, 5, 3))
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(buffer)))
    np.testing.assert_array_equal(imageio._orient(pixels, orientation), expected)


def test_exif_orientation_is_applied_to_16bit_colour(tmp_path):
    pixels = u16((3, 5, 3))
    path = save_cv2_16(tmp_path / "o16.png", pixels)
    add_png_orientation(path, 8)
    image = read_image(path)
    np.testing.assert_array_equal(np.rint(image.rgb * 65535), np.rot90(pixels, 1))


def test_icc_profile_is_read(tmp_path):
    image = read_image(save_pil(tmp_path / "icc.png", u8((4, 4, 3)), icc_profile=SRGB_ICC))
    assert image.icc_profile == SRGB_ICC


# ---------------------------------------------------------------------------------- bad input


def assert_one_line(message: str, path: Path, reason: str) -> None:
    assert message.startswith(f"{path}: ") and "\n" not in message and reason in message


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "z.png")
    assert_one_line(str(info.value), tmp_path / "z.png", "empty file")


def test_text_file_named_png(tmp_path):
    (tmp_path / "t.png").write_text("hello, not an image\n")
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "t.png")
    assert_one_line(str(info.value), tmp_path / "t.png", "not an image file")


@pytest.mark.parametrize(("ext", "cut"), [(".png", 0.5), (".png", 20 / 1e9), (".jpg", 0.5), (".webp", 0.5),
                                          (".bmp", 0.5), (".tif", 0.5)])
def test_truncated_files(tmp_path, ext, cut):
    source = save_pil(tmp_path / f"full{ext}", u8((32, 32, 3)))
    data = source.read_bytes()
    broken = tmp_path / f"cut{ext}"
    broken.write_bytes(data[: max(20, int(len(data) * cut))])
    with pytest.raises(InputError) as info:
        read_image(broken)
    assert_one_line(str(info.value), broken, "truncated or corrupt")


def test_unsupported_format_and_mode(tmp_path):
    PILImage.new("RGB", (4, 4)).save(tmp_path / "gif.png", format="GIF")
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "gif.png")
    assert_one_line(str(info.value), tmp_path / "gif.png", "unsupported format GIF")
    PILImage.fromarray(np.ones((3, 3), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "float.tif")
    assert_one_line(str(info.value), tmp_path / "float.tif", "unsupported pixel mode 'F'")


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    path = save_pil(tmp_path / "big.png", u8((10, 20, 3)))
    read_image(path, max_pixels=200)  # exactly at the limit: fine
    monkeypatch.setattr(PILImage.Image, "load", lambda self: pytest.fail("decoded an oversized image"))
    with pytest.raises(InputError) as info:
        read_image(path, max_pixels=199)
    assert_one_line(str(info.value), path, "20x10 = 200 pixels, over the limit of 199")


def test_our_limit_replaces_pillows_bomb_check(tmp_path, monkeypatch):
    path = save_pil(tmp_path / "a.png", u8((10, 20, 3)))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)  # Pillow alone would refuse this file
    assert read_image(path, max_pixels=1000).size == (20, 10)
    assert PILImage.MAX_IMAGE_PIXELS == 10  # restored


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        read_image(tmp_path / "nope.png")


# ---------------------------------------------------------------------------------- encoding


def test_upscale_alpha_shape_range_and_constancy():
    alpha = RNG.random((3, 5), dtype=np.float32)
    out = upscale_alpha(alpha, 4)
    assert out.shape == (12, 20) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert upscale_alpha(alpha, (7, 9)).shape == (7, 9)
    np.testing.assert_allclose(upscale_alpha(np.full((3, 3), 0.25, np.float32), 4), 0.25, atol=1e-6)
    edge = np.zeros((4, 4), np.float32)
    edge[:, 2:] = 1.0  # bicubic overshoots at a hard edge; the clamp must catch it
    out = upscale_alpha(edge, 4)
    assert out.min() == 0.0 and out.max() == 1.0


def rgb_float(h=4, w=6):
    return RNG.random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize(("fmt", "mode"), [("png", "RGBA"), ("webp", "RGBA"), ("tiff", "RGBA"),
                                           ("jpg", "RGB"), ("bmp", "RGB")])
def test_alpha_is_kept_where_the_format_can(tmp_path, fmt, mode):
    rgb, alpha = rgb_float(), RNG.random((4, 6), dtype=np.float32)
    write_image(tmp_path / f"o.{fmt}", rgb, alpha=alpha, fmt=fmt, quality=100)
    with PILImage.open(tmp_path / f"o.{fmt}") as im:
        assert im.mode == mode and im.size == (6, 4)
        if fmt in ("png", "tiff"):
            np.testing.assert_array_equal(np.asarray(im)[..., 3], np.rint(alpha * 255))
            np.testing.assert_array_equal(np.asarray(im)[..., :3], np.rint(rgb * 255))


def test_gray_output_is_bt601_luma(tmp_path):
    rgb = rgb_float()
    write_image(tmp_path / "g.png", rgb, is_gray=True)
    with PILImage.open(tmp_path / "g.png") as im:
        assert im.mode == "L"
        luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        assert np.abs(np.asarray(im).astype(int) - np.rint(luma * 255)).max() <= 1
    write_image(tmp_path / "ga.png", rgb, alpha=rgb[..., 0], is_gray=True)
    with PILImage.open(tmp_path / "ga.png") as im:
        assert im.mode == "LA"


@pytest.mark.parametrize(("is_gray", "alpha", "channels"),
                         [(True, False, 1), (False, False, 3), (False, True, 4)])
def test_16bit_png_output_exact(tmp_path, is_gray, alpha, channels):
    rgb = rgb_float(5, 3)
    a = RNG.random((5, 3), dtype=np.float32) if alpha else None
    write_image(tmp_path / "o.png", rgb, alpha=a, is_gray=is_gray, bit_depth=16, icc_profile=SRGB_ICC)
    decoded = cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    expected = np.rint((rgb @ np.array([0.299, 0.587, 0.114], np.float32) if is_gray else rgb) * 65535)
    if channels == 1:
        np.testing.assert_array_equal(decoded, expected)
    else:
        np.testing.assert_array_equal(decoded[..., [2, 1, 0]], expected)
    if alpha:
        np.testing.assert_array_equal(decoded[..., 3], np.rint(a * 65535))
    with PILImage.open(tmp_path / "o.png") as im:
        assert im.info["icc_profile"] == SRGB_ICC


def test_16bit_tiff_output(tmp_path):
    rgb = rgb_float(3, 5)
    write_image(tmp_path / "o.tif", rgb, bit_depth=16, fmt="tiff")
    decoded = cv2.imread(str(tmp_path / "o.tif"), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded[..., ::-1], np.rint(rgb * 65535))


def test_16bit_input_to_jpg_is_8bit(tmp_path):
    write_image(tmp_path / "o.jpg", rgb_float(), bit_depth=16, fmt="jpg")
    with PILImage.open(tmp_path / "o.jpg") as im:
        assert im.mode == "RGB"


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_icc_profile_is_carried(tmp_path, fmt):
    write_image(tmp_path / f"o.{fmt}", rgb_float(), icc_profile=SRGB_ICC, fmt=fmt)
    with PILImage.open(tmp_path / f"o.{fmt}") as im:
        assert im.info.get("icc_profile") == SRGB_ICC


def test_quality_changes_jpeg_size(tmp_path):
    rgb = rgb_float(32, 32)
    write_image(tmp_path / "lo.jpg", rgb, fmt="jpg", quality=10)
    write_image(tmp_path / "hi.jpg", rgb, fmt="jpg", quality=100)
    assert (tmp_path / "lo.jpg").stat().st_size < (tmp_path / "hi.jpg").stat().st_size


def test_bad_format_and_quality(tmp_path):
    with pytest.raises(InputError, match="'gif' is not one of"):
        write_image(tmp_path / "o.gif", rgb_float(), fmt="gif")
    with pytest.raises(InputError, match="quality 0 is out of range"):
        write_image(tmp_path / "o.jpg", rgb_float(), fmt="jpg", quality=0)


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "o.png"
    target.write_bytes(b"previous complete file")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, rgb_float())
    assert target.read_bytes() == b"previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_written_file_has_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_image(tmp_path / "o.png", rgb_float())
    finally:
        os.umask(old)
    assert (tmp_path / "o.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_broken_16bit_colour_is_one_error_and_no_native_noise(tmp_path, capfd, ext):
    data = save_cv2_16(tmp_path / f"full{ext}", u16((32, 32, 3))).read_bytes()
    broken = tmp_path / f"cut{ext}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_image(broken)
    assert_one_line(str(info.value), broken, "truncated or corrupt")
    assert capfd.readouterr().err == ""  # libpng/libtiff must not print lines of their own


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_output_uses_the_fast_zlib_level(tmp_path, bit_depth):
    """PNG output is deflated at level 1 (OpenCV's default, what Real-ESRGAN writes): the zlib header of
    the first IDAT says 'fastest' (FLEVEL 0), and the pixels read back unchanged."""
    from gtasr_deploy.media.images import write_image

    rgb = np.random.default_rng(0).uniform(0, 1, (24, 40, 3)).astype(np.float32)
    path = tmp_path / "out.png"
    write_image(path, rgb, bit_depth=bit_depth)
    data, pos, idat = path.read_bytes(), 8, None
    while idat is None:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat = data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert idat[0] == 0x78 and idat[1] >> 6 == 0  # deflate, FLEVEL 0 (fastest)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64) / (255.0 if bit_depth == 8 else 65535.0)
    assert np.abs(back - rgb).max() <= 0.5 / (255.0 if bit_depth == 8 else 65535.0) + 1e-6
