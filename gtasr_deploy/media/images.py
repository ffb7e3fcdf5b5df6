"""Image decoding and atomic encoding for the upscaler (SPEC §3 steps 1, 5, 6).

Decoding turns every supported file (PNG, JPEG, WebP, BMP, TIFF; 8/16-bit; gray, gray+alpha,
RGB, RGBA, palette, CMYK) into float32 RGB in [0, 1] plus an optional alpha plane, with EXIF
orientation applied. Every problem with an input file raises :class:`InputError` whose message
is ``"<path>: <reason>"`` on one line, so a batch can print it and go on.

Encoding writes gray for gray input, 16-bit PNG/TIFF for 16-bit input, re-attaches alpha where
the format keeps it (PNG, WebP, TIFF; dropped for JPEG and BMP) and embeds the ICC profile where
the encoder can (all 8-bit formats and 16-bit PNG; not 16-bit TIFF), and EXIF/XMP where given and
the format holds them (:mod:`.metadata`). Files appear atomically: temp file in the destination
folder, fsync, ``os.replace``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from ..atomic import atomic_write_bytes
from ..errors import InputError
from .metadata import Metadata, for_output, pillow_save_options, png_chunks, read_metadata

DEFAULT_MAX_PIXELS = 50_000_000
# Pillow format names we accept; MPO is what Pillow calls many camera JPEGs.
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "BMP": "bmp", "DIB": "bmp",
            "TIFF": "tiff"}
_EXPECTED = "expected PNG, JPEG, WebP, BMP or TIFF"
_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
          b"MM\x00*": "TIFF", b"RIFF": "WebP"}
# Pillow and zlib report corrupt data with any of these; they are input problems, not bugs.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error,
                  PILImage.DecompressionBombError, cv2.error)
WRITE_FORMATS = ("png", "jpg", "webp", "bmp", "tiff")
# zlib level of PNG output: 1, what OpenCV (and so Real-ESRGAN and chaiNNer) writes by default: a x4 output
# encodes about 4x faster than at level 6 (0.10 s vs 0.39 s at 1200x800) for files about 15% larger.
PNG_LEVEL = 1
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", "a character device"...)."""
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")



@dataclass(frozen=True, kw_only=True)
class Image:
    """A decoded image.

    ``rgb``: float32 (H, W, 3) in [0, 1], RGB order, gray replicated to 3 channels.
    ``alpha``: float32 (H, W) in [0, 1], or None when the file has no alpha.
    ``bit_depth``: 8 or 16 (per channel, of the source file).
    ``metadata``: the source's EXIF/XMP (orientation still as in the file), or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    is_gray: bool
    icc_profile: bytes | None
    source_format: str  # "png", "jpeg", "webp", "bmp", "tiff"
    metadata: Metadata | None = None
    frames: int = 1  # frames/pages in the file (animated PNG/WebP, multi-page TIFF); the first is decoded

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


# ---------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode ``path``; the pixel count is checked from the header, before any pixel is decoded.

    ``max_pixels`` None or 0 disables the decompression-bomb guard.
    Raises InputError("<path>: <reason>") for empty, non-image, unsupported, oversized, truncated
    or corrupt files.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:  # missing, symlink loop, name too long...: the OS's reason, not "corrupt"
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read forever; a device is no image
        raise InputError(f"{path}: not a regular file ({file_kind(info.st_mode)}); expected an image file")
    try:
        if info.st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        with _no_pillow_bomb_check(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about odd tags; one line per file only
            with PILImage.open(path) as im:
                return replace(_decode(path, im, max_pixels), frames=_frames(im))
    except PILImage.UnidentifiedImageError:
        raise InputError(f"{path}: {_unidentified_reason(path)}") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{path}: truncated or corrupt image data ({_one_line(exc)})") from None


def _decode(path: Path, im: PILImage.Image, max_pixels: int | None) -> Image:
    fmt = _FORMATS.get(im.format or "")
    if fmt is None:
        raise InputError(f"{path}: unsupported format {im.format} ({_EXPECTED})")
    width, height = im.size
    if max_pixels and width * height > max_pixels:
        raise InputError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (raise it with --max-pixels if the file is trusted)")
    icc = im.info.get("icc_profile") or None
    meta = read_metadata(im)  # before exif_transpose, whose copy has orientation 1
    is_16bit = _is_16bit(im, fmt)  # before exif_transpose, which returns a copy without the header
    if is_16bit and im.mode in ("RGB", "RGBA"):
        # Pillow has no 16-bit colour modes and would silently truncate to 8 bit; OpenCV decodes
        # 16-bit colour exactly (but ignores EXIF, so orientation is applied by hand).
        if fmt == "png":
            _verify_png(path)  # libpng would print its own stderr line for a truncated file
        pixels = _cv2_decode_16bit(path)
        pixels = _orient(pixels, im.getexif().get(0x0112, 1))
        return _from_array(pixels, bit_depth=16, is_gray=_header_says_gray(im, fmt), icc=icc, fmt=fmt,
                           meta=meta)
    im.load()
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    # Pillow < 11 opens 16-bit gray PNG as 32-bit "I"; the values still fit 16 bits.
    if mode in ("I;16", "I;16B", "I;16L", "I;16N") or (mode == "I" and is_16bit):
        gray = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        return _from_array(gray, bit_depth=16, is_gray=True, icc=icc, fmt=fmt, meta=meta)
    if mode == "CMYK":
        # A CMYK profile does not describe the RGB result, so it must not travel with it.
        return _from_array(np.asarray(im.convert("RGB")), bit_depth=8, is_gray=False, icc=None, fmt=fmt,
                           meta=meta)
    converted = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGB": "RGB", "RGBX": "RGB",
                 "YCbCr": "RGB", "RGBA": "RGBA", "RGBa": "RGBA", "PA": "RGBA",
                 "P": "RGBA" if "transparency" in im.info else "RGB"}.get(mode)
    if converted is None:
        raise InputError(f"{path}: unsupported pixel mode {mode!r} (expected 8/16-bit gray, gray+alpha, "
                         "RGB, RGBA, palette or CMYK)")
    pixels = np.asarray(im.convert(converted) if converted != mode else im)
    return _from_array(pixels, bit_depth=8, is_gray=converted in ("L", "LA"), icc=icc, fmt=fmt, meta=meta)


def _from_array(pixels: np.ndarray, *, bit_depth: int, is_gray: bool, icc: bytes | None, fmt: str,
                meta: Metadata | None = None) -> Image:
    """uint8/uint16 (H, W[, C]) with C in 1..4 in RGB(A)/gray(+alpha) order -> Image."""
    values = pixels.astype(np.float32) / np.float32(2**bit_depth - 1)
    if values.ndim == 2:
        values = values[..., None]
    channels = values.shape[2]
    color = values[..., :1] if channels in (1, 2) else values[..., :3]
    alpha = values[..., channels - 1] if channels in (2, 4) else None
    rgb = np.ascontiguousarray(np.broadcast_to(color, (*color.shape[:2], 3)))
    return Image(rgb=rgb, alpha=None if alpha is None else np.ascontiguousarray(alpha),
                 bit_depth=bit_depth, is_gray=is_gray, icc_profile=icc, source_format=fmt, metadata=meta)


def _is_16bit(im: PILImage.Image, fmt: str) -> bool:
    if fmt == "png":
        return _png_ihdr(im)[0] == 16
    if fmt == "tiff":
        bits = im.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _header_says_gray(im: PILImage.Image, fmt: str) -> bool:
    """Colour type 0/4 (PNG) or photometric 0/1 (TIFF): gray, even where Pillow says RGBA."""
    if fmt == "png":
        return _png_ihdr(im)[1] in (0, 4)
    return im.tag_v2.get(262, 2) in (0, 1)


def _png_ihdr(im: PILImage.Image) -> tuple[int, int]:
    """(bit depth, colour type) read from the PNG header: Pillow does not expose them."""
    with open(im.filename, "rb") as f:  # own handle: Pillow's file position must not move
        f.seek(24)
        depth, color_type = f.read(2)
    return depth, color_type


def _verify_png(path: Path) -> None:
    """Walk every chunk and check its CRC (cheap: no decompression); raises on a broken file."""
    with PILImage.open(path) as im:
        im.verify()


def _cv2_decode_16bit(path: Path) -> np.ndarray:
    """uint16 (H, W, 3|4) in RGB(A) order, gray+alpha expanded to RGBA by OpenCV."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # libtiff chatter; we report
    try:
        pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise InputError(f"{path}: truncated or corrupt 16-bit image data")
    order = [2, 1, 0, 3][: pixels.shape[2]]
    return pixels[..., order]


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to (H, W, ...) pixels, as ImageOps.exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


@contextlib.contextmanager
def _no_pillow_bomb_check() -> Iterator[None]:
    """Let our own --max-pixels guard speak instead of Pillow's fixed 89/179 MP limits.

    Process-global; the upscaler decodes on one thread.
    """
    previous = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        PILImage.MAX_IMAGE_PIXELS = previous


def _frames(im: PILImage.Image) -> int:
    """Frames of an animated PNG/WebP or pages of a TIFF; 1 for the rest (a camera JPEG's MPO
    extra frames are its previews, not pictures left out)."""
    return getattr(im, "n_frames", 1) if im.format in ("PNG", "WEBP", "TIFF") else 1


def _unidentified_reason(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] in (b"II*\x00", b"MM\x00*"):  # Pillow cannot open float RGB TIFFs; OpenCV can tell
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            pixels = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if pixels is not None and pixels.dtype.kind == "f":
            return (f"TIFF with {pixels.dtype.itemsize * 8}-bit float samples is not supported "
                    "(expected 8/16-bit integer samples)")
    for magic, name in _MAGIC.items():
        if head.startswith(magic) and (name != "WebP" or head[8:12] == b"WEBP"):
            return f"truncated or corrupt {name} header"
    return f"not an image file ({_EXPECTED})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def upscale_alpha(alpha: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Bicubic upscale of an alpha plane, clamped to [0, 1].

    ``alpha``: float32 (H, W) in [0, 1]; ``size``: an integer scale, or the (height, width) of
    the result (pass the SR image's shape so both always match). Returns float32.
    """
    height, width = alpha.shape
    out_h, out_w = (height * size, width * size) if isinstance(size, int) else size
    # OpenCV's bicubic uses a = -0.75, as the model's up() does (SPEC §1).
    resized = cv2.resize(alpha.astype(np.float32), (out_w, out_h), interpolation=cv2.INTER_CUBIC)
    return np.clip(resized, 0.0, 1.0)


# ---------------------------------------------------------------------------------- writing


def format_for_suffix(suffix: str) -> str:
    """'.PNG' -> 'png', '.jpeg' -> 'jpg', '.tif' -> 'tiff'; InputError for other suffixes."""
    fmt = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".bmp": "bmp",
           ".tif": "tiff", ".tiff": "tiff"}.get(suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write {suffix!r} files (expected one of {', '.join(WRITE_FORMATS)})")
    return fmt


def write_image(path: str | os.PathLike, rgb: np.ndarray, *, alpha: np.ndarray | None = None,
                is_gray: bool = False, bit_depth: int = 8, icc_profile: bytes | None = None,
                fmt: str = "png", quality: int = 95, metadata: Metadata | None = None) -> None:
    """Encode and write atomically; a partial file is never visible under ``path``.

    ``rgb``: float32 (H, W, 3) in [0, 1] (clamped here); ``alpha``: float32 (H, W) or None.
    Gray output (BT.601 luma) when ``is_gray``; 16-bit only for ``png``/``tiff`` with
    ``bit_depth=16``; alpha kept for png/webp/tiff, dropped for jpg/bmp; ``quality`` (1..100)
    applies to jpg/webp. ``metadata`` (the source's, e.g. ``Image.metadata``) is embedded with
    orientation 1 and this image's size where the format holds it; None writes none. The parent
    folder must exist.
    """
    if fmt not in WRITE_FORMATS:
        raise InputError(f"output format {fmt!r} is not one of {', '.join(WRITE_FORMATS)}")
    if not 1 <= quality <= 100:
        raise InputError(f"quality {quality} is out of range (expected 1..100)")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or (alpha is not None and alpha.shape != rgb.shape[:2]):
        raise ValueError(f"write_image expects rgb (H, W, 3) and alpha (H, W); got {rgb.shape}, "
                         f"{None if alpha is None else alpha.shape}")
    planes = [rgb @ _BT601] if is_gray else [rgb[..., i] for i in range(3)]
    if alpha is not None and fmt in ("png", "webp", "tiff"):
        planes.append(alpha)
    values = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    meta = None if metadata is None else for_output(metadata, (rgb.shape[1], rgb.shape[0]))
    if bit_depth == 16 and fmt in ("png", "tiff"):
        pixels = np.rint(values * 65535.0).astype(np.uint16)
        data = _encode_png16(pixels, icc_profile, meta) if fmt == "png" else _encode_tiff16(pixels)
    else:
        data = _encode_8bit(np.rint(values * 255.0).astype(np.uint8), fmt, icc_profile, quality, meta)
    atomic_write_bytes(path, data)


def _encode_8bit(pixels: np.ndarray, fmt: str, icc: bytes | None, quality: int,
                 meta: Metadata | None = None) -> bytes:
    """uint8 (H, W, C) gray/gray+alpha/RGB/RGBA -> encoded file bytes."""
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    im = PILImage.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)
    if fmt == "webp" and mode in ("L", "LA"):
        im = im.convert("RGBA" if mode == "LA" else "RGB")  # WebP has no gray mode
    options: dict = {"icc_profile": icc} if icc else {}
    if fmt in ("jpg", "webp"):
        options["quality"] = quality
    if fmt == "png":
        options["compress_level"] = PNG_LEVEL
    if fmt == "tiff":
        options["compression"] = "tiff_adobe_deflate"  # uncompressed x4 outputs are huge
    options.update(pillow_save_options(meta, fmt))  # may turn TIFF compression off (metadata.py)
    buffer = io.BytesIO()
    im.save(buffer, format={"jpg": "JPEG"}.get(fmt, fmt.upper()), **options)
    return buffer.getvalue()


def _encode_png16(pixels: np.ndarray, icc: bytes | None, meta: Metadata | None = None) -> bytes:
    """uint16 (H, W, C), C = 1..4 -> 16-bit PNG bytes (PNG spec; OpenCV cannot embed ICC or 2 channels)."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").reshape(height, width * channels).view(np.uint8)
    bpp = 2 * channels
    # Filter type 1 ("Sub"): each byte minus the byte one pixel to the left, modulo 256.
    filtered = rows.copy()
    filtered[:, bpp:] -= rows[:, :-bpp]
    scanlines = np.concatenate([np.ones((height, 1), np.uint8), filtered], axis=1)
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    chunks += [_png_chunk(kind, payload) for kind, payload in png_chunks(meta)]
    chunks.append(_png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), PNG_LEVEL)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _encode_tiff16(pixels: np.ndarray) -> bytes:
    """uint16 (H, W, C) -> 16-bit TIFF bytes via OpenCV (no ICC; gray+alpha written as RGBA)."""
    if pixels.shape[2] == 2:
        pixels = pixels[..., [0, 0, 0, 1]]
    order = [2, 1, 0, 3][: pixels.shape[2]] if pixels.shape[2] > 1 else [0]
    ok, buffer = cv2.imencode(".tiff", np.ascontiguousarray(pixels[..., order]))
    if not ok:
        raise ValueError("OpenCV could not encode the 16-bit TIFF")
    return buffer.tobytes()
