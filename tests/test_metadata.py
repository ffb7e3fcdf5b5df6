"""EXIF / XMP / ICC carried from input to output: made here with Pillow, written through
imageio / run_batch / the CLI, read back; orientation 1 and the new sizes; --strip-metadata."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms, PngImagePlugin

from gtasr_deploy.batch.runner import collect_inputs, plan_outputs, run_batch
from gtasr_deploy.cli.upscale import main
from gtasr_deploy.media.images import read_image, write_image
from gtasr_deploy.media.metadata import Metadata, for_output
from gtasr_deploy.media.resize import OutputSize

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json"),
           "--no-shared-norm"]
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, ORIENTATION, DATETIME, MAKER_NOTE = 0x010F, 0x0110, 0x0112, 0x0132, 0x927C
DATE_ORIGINAL, PIXEL_X, PIXEL_Y = 0x9003, 0xA002, 0xA003
GPS = {1: "N", 2: (48.0, 51.0, 29.5), 3: "E", 4: (2.0, 17.0, 40.2)}
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" exif:PixelXDimension="40">'
       b'<exif:PixelYDimension>30</exif:PixelYDimension><dc:creator>Ada</dc:creator>'
       b'</rdf:Description></rdf:RDF></x:xmpmeta>')
RNG = np.random.default_rng(11)


def camera_exif(width: int, height: int, *, orientation: int = 6, maker_note: bytes | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE], exif[MODEL], exif[ORIENTATION], exif[DATETIME] = "Canon", "EOS R5", orientation, "2024:05:01 10:00:00"
    sub = exif.get_ifd(EXIF_IFD)
    sub[DATE_ORIGINAL], sub[PIXEL_X], sub[PIXEL_Y] = "2024:05:01 09:59:58", width, height
    if maker_note is not None:
        sub[MAKER_NOTE] = maker_note
    exif.get_ifd(GPS_IFD).update(GPS)
    return exif


def camera_photo(path: Path, *, size=(40, 30), mode="RGB") -> np.ndarray:
    """A file as a camera writes it: stored landscape 40x30, orientation 6 (display: rotate 90° CW)."""
    pixels = RNG.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    exif = camera_exif(*size)
    options: dict = {"xmp": XMP}  # JPEG and WebP
    if path.suffix == ".png":
        options = {"pnginfo": PngImagePlugin.PngInfo()}
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=False)
    if path.suffix == ".tiff":  # XMP is TIFF tag 700; uncompressed: libtiff cannot write sub-IFDs
        exif[700], options = XMP, {}
    Image.fromarray(pixels if len(mode) > 1 else pixels[..., 0], mode=mode).save(
        path, exif=exif.tobytes(), icc_profile=SRGB_ICC, **options)
    return pixels


def check_carried(path: Path, size: tuple[int, int], *, xmp: bool = True) -> None:
    """The output at ``path`` holds the camera fields, orientation 1 and ``size`` = (width, height)."""
    with Image.open(path) as im:
        assert im.size == size
        exif = im.getexif()
        assert (exif[MAKE], exif[MODEL], exif[DATETIME]) == ("Canon", "EOS R5", "2024:05:01 10:00:00")
        assert exif[ORIENTATION] == 1
        sub = exif.get_ifd(EXIF_IFD)
        assert sub[DATE_ORIGINAL] == "2024:05:01 09:59:58" and (sub[PIXEL_X], sub[PIXEL_Y]) == size
        assert {k: exif.get_ifd(GPS_IFD)[k] for k in GPS} == GPS
        assert im.info.get("icc_profile") == SRGB_ICC
        if xmp:
            packet = im.info["xmp"]
            assert b'tiff:Orientation="1"' in packet and b"<dc:creator>Ada</dc:creator>" in packet
            assert f'exif:PixelXDimension="{size[0]}"'.encode() in packet
            assert f"<exif:PixelYDimension>{size[1]}</exif:PixelYDimension>".encode() in packet


def check_stripped(path: Path) -> None:
    with Image.open(path) as im:
        exif = im.getexif()
        assert MAKE not in exif and MODEL not in exif and GPS_IFD not in exif and EXIF_IFD not in exif
        assert not im.info.get("xmp")
        assert im.info.get("icc_profile") == SRGB_ICC  # colour, not metadata: kept


@pytest.mark.parametrize("src_name", ["cam.jpg", "cam.png", "cam.webp", "cam.tiff"])
@pytest.mark.parametrize("out_fmt", ["png", "jpg", "webp", "tiff"])
def test_metadata_round_trip_through_write_image(tmp_path, src_name, out_fmt):
    camera_photo(tmp_path / src_name)
    image = read_image(tmp_path / src_name)
    assert image.size == (30, 40)  # turned upright by the reader
    write_image(tmp_path / f"out.{out_fmt}", image.rgb, fmt=out_fmt, icc_profile=image.icc_profile,
                metadata=image.metadata)
    check_carried(tmp_path / f"out.{out_fmt}", (30, 40))
    # Read again: already upright, so no second rotation.
    assert read_image(tmp_path / f"out.{out_fmt}").size == (30, 40)


def test_16bit_png_carries_metadata_and_16bit_tiff_is_written_without(tmp_path):
    camera_photo(tmp_path / "cam.png")
    image = read_image(tmp_path / "cam.png")
    write_image(tmp_path / "deep.png", image.rgb, bit_depth=16, icc_profile=image.icc_profile,
                metadata=image.metadata)
    check_carried(tmp_path / "deep.png", (30, 40))
    write_image(tmp_path / "deep.tiff", image.rgb, fmt="tiff", bit_depth=16, metadata=image.metadata)
    assert read_image(tmp_path / "deep.tiff").bit_depth == 16  # documented: OpenCV's encoder holds none


def test_gray_and_alpha_outputs_carry_metadata(tmp_path):
    camera_photo(tmp_path / "gray.png", mode="L")
    camera_photo(tmp_path / "rgba.png", mode="RGBA")
    for name, fmt in (("gray.png", "jpg"), ("gray.png", "webp"), ("rgba.png", "tiff"), ("rgba.png", "webp")):
        image = read_image(tmp_path / name)
        out = tmp_path / f"{name}.{fmt}"
        write_image(out, image.rgb, alpha=image.alpha, is_gray=image.is_gray, fmt=fmt,
                    icc_profile=image.icc_profile, metadata=image.metadata)
        check_carried(out, (30, 40))


def test_bmp_output_and_no_metadata_are_fine(tmp_path):
    camera_photo(tmp_path / "cam.jpg")
    image = read_image(tmp_path / "cam.jpg")
    write_image(tmp_path / "out.bmp", image.rgb, fmt="bmp", metadata=image.metadata)
    assert read_image(tmp_path / "out.bmp").size == (30, 40)
    Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png").metadata is None


def test_tiff_source_layout_tags_are_not_carried(tmp_path):
    camera_photo(tmp_path / "cam.tiff")
    image = read_image(tmp_path / "cam.tiff")
    meta = for_output(image.metadata, (60, 80))
    tags = Image.Exif()
    tags.load(meta.exif)
    assert not {256, 257, 258, 259, 273, 279, 700, 34675} & set(tags)  # no stale sizes, strips, XMP, ICC
    big = np.kron(image.rgb, np.ones((2, 2, 1), np.float32))
    write_image(tmp_path / "out.tiff", big, fmt="tiff", metadata=image.metadata)
    with Image.open(tmp_path / "out.tiff") as im:
        assert im.size == (60, 80) and im.getexif()[256] == 60 and im.getexif()[257] == 80
        assert np.array_equal(np.asarray(im), np.rint(big * 255).astype(np.uint8))


def test_oversized_jpeg_exif_loses_only_the_maker_note(tmp_path):
    exif = camera_exif(30, 40, orientation=1, maker_note=b"\x01" * 70_000).tobytes()
    meta = Metadata(exif=exif, xmp=XMP + b" " * 70_000)
    write_image(tmp_path / "out.jpg", np.full((40, 30, 3), 0.5, np.float32), fmt="jpg", icc_profile=SRGB_ICC,
                metadata=meta)
    with Image.open(tmp_path / "out.jpg") as im:
        exif_out = im.getexif()
        assert exif_out[MAKE] == "Canon" and MAKER_NOTE not in exif_out.get_ifd(EXIF_IFD)
        assert not im.info.get("xmp")  # over one JPEG segment: left out, not an error
    write_image(tmp_path / "out.png", np.full((40, 30, 3), 0.5, np.float32), metadata=meta)
    with Image.open(tmp_path / "out.png") as im:  # PNG has no such limit: everything kept
        assert len(im.getexif().get_ifd(EXIF_IFD)[MAKER_NOTE]) == 70_000 and len(im.info["xmp"]) > 70_000


def nearest_x4(rgb):
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


@pytest.mark.parametrize("strip", [False, True])
def test_batch_carries_or_strips_with_the_new_size(tmp_path, strip):
    src = tmp_path / "in"
    src.mkdir()
    camera_photo(src / "cam.jpg")
    jobs = plan_outputs(collect_inputs(src), tmp_path / "out", fmt="jpg")
    summary = run_batch(jobs, nearest_x4, output_size=OutputSize(outscale=2), strip_metadata=strip,
                        progress=False, err=io.StringIO())
    assert summary.written == 1, summary.records
    if strip:
        check_stripped(jobs[0].dst)
    else:
        check_carried(jobs[0].dst, (60, 80))


@pytest.mark.slow  # ~15 s on 2 busy cores
def test_cli_strip_metadata(tmp_path):
    camera_photo(tmp_path / "cam.png")
    kept, stripped = tmp_path / "kept.webp", tmp_path / "stripped.webp"
    for target, extra in ((kept, []), (stripped, ["--strip-metadata"])):
        result = CliRunner().invoke(main, [str(tmp_path / "cam.png"), str(target), *WEIGHTS, "-q", *extra])
        assert result.exit_code == 0, result.output
    check_carried(kept, (120, 160))
    check_stripped(stripped)


def test_unparsable_exif_never_costs_the_picture(tmp_path):
    pixels = RNG.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    # A count far past the end of the block, then truncated IFD entries.
    junk = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x0f\x01\x02\x00\xff\xff\x00\x00\x99\x99\x99\x99\x10"
    Image.fromarray(pixels).save(tmp_path / "junk.jpg", exif=junk, quality=100)
    image = read_image(tmp_path / "junk.jpg")
    assert image.size == (6, 8)
    write_image(tmp_path / "out.jpg", image.rgb, fmt="jpg", metadata=image.metadata)
    assert read_image(tmp_path / "out.jpg").size == (6, 8)
    meta = for_output(Metadata(exif=junk, xmp=None), (6, 8))  # the write side alone, too
    assert meta.exif is None or meta.exif.startswith(b"Exif")


def test_16bit_colour_source_rotated_by_hand_gets_orientation_1(tmp_path):
    # 16-bit colour is decoded by OpenCV and rotated by hand; its EXIF must still say 1 afterwards.
    deep = RNG.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    payload = camera_exif(40, 30).tobytes()[6:]
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "deep.png").write_bytes(data[:33] + chunk + data[33:])  # right after IHDR
    image = read_image(tmp_path / "deep.png")
    assert image.bit_depth == 16 and image.size == (30, 40)
    write_image(tmp_path / "out.png", image.rgb, bit_depth=16, metadata=image.metadata)
    with Image.open(tmp_path / "out.png") as im:
        exif = im.getexif()
        assert exif[ORIENTATION] == 1 and exif[MAKE] == "Canon"
        assert (exif.get_ifd(EXIF_IFD)[PIXEL_X], exif.get_ifd(EXIF_IFD)[PIXEL_Y]) == (30, 40)
    out = read_image(tmp_path / "out.png")
    assert out.size == (30, 40) and np.allclose(out.rgb, image.rgb, atol=1 / 65535)
