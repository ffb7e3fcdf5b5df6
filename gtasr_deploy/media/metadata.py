"""EXIF and XMP carried from an input file to its upscaled output (ICC travels in imageio).

Reading keeps the source's EXIF (as the bytes Pillow's ``Image.Exif.tobytes()`` gives: IFD0, the
Exif and GPS sub-IFDs) and its XMP packet. Writing prepares them for the new pixels:

* Orientation becomes 1 (EXIF tag 274 and ``tiff:Orientation`` in XMP): the reader has already
  turned the pixels upright, so keeping 6 would rotate the result a second time.
* PixelXDimension / PixelYDimension (Exif IFD) and ``exif:PixelX/YDimension``,
  ``tiff:ImageWidth/ImageLength`` (XMP) get the output size.
* Tags that describe the source file's layout (strip offsets, compression, bits per sample...)
  are dropped: they would contradict the new file. So is the thumbnail (IFD1; Pillow does not
  write it back, and it would show the old orientation) and IPTC/Photoshop blocks.

What each output format can hold (with Pillow as the writer; no EXIF bytes are built by hand):
PNG: eXIf chunk + XMP in an iTXt chunk; JPEG: APP1 EXIF (64 KiB; the camera MakerNote is left out
when it does not fit, then EXIF as a whole) + APP1 XMP (left out over 64 KiB; needs Pillow >= 11);
WebP: EXIF + XMP chunks; TIFF: EXIF tags, sub-IFDs and XMP (tag 700) — written uncompressed when
there is an Exif/GPS sub-IFD, because Pillow's compressed TIFF encoder (libtiff) cannot write
sub-IFDs; BMP and 16-bit TIFF (OpenCV's encoder): none.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import PngImagePlugin

_ORIENTATION, _EXIF_IFD, _GPS_IFD, _MAKER_NOTE = 0x0112, 0x8769, 0x8825, 0x927C
_PIXEL_X, _PIXEL_Y, _XMP_TAG = 0xA002, 0xA003, 700
# IFD0 tags that describe the source file's pixel layout, or blocks carried elsewhere (ICC) or not
# at all (IPTC, Photoshop): none of them is true of the file we write.
_SOURCE_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 292, 293, 317, 320,
    322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530, 532, _XMP_TAG, 33723, 34377,
    34675})
_JPEG_MARKER_MAX = 65533  # bytes in one JPEG APP segment after its length field
_JPEG_XMP_HEADER = len(b"http://ns.adobe.com/xap/1.0/\x00")
_XMP_SIZE_FIELDS = ("exif:PixelXDimension", "exif:PixelYDimension", "tiff:ImageWidth", "tiff:ImageLength")
# What Pillow raises on EXIF it cannot parse or write back (odd types, bad offsets). Metadata is
# carried on a best-effort basis: such EXIF is left out, the picture is never lost over it.
_EXIF_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, SyntaxError, struct.error)


@dataclass(frozen=True)
class Metadata:
    """``exif``: b"Exif\\0\\0" + TIFF-structured tags (Pillow's form); ``xmp``: the XMP packet."""

    exif: bytes | None = None
    xmp: bytes | None = None


def read_metadata(im: PILImage.Image) -> Metadata | None:
    """EXIF and XMP of an opened file (call before ``ImageOps.exif_transpose``); None when it has neither."""
    try:
        exif_tags = im.getexif()
        exif = exif_tags.tobytes() if len(exif_tags) else None
    except _EXIF_ERRORS:
        exif = None
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):  # PNG iTXt text on older Pillow
        xmp = xmp.encode("utf-8")
    if not isinstance(xmp, bytes) or not xmp:
        xmp = None
    return None if exif is None and xmp is None else Metadata(exif=exif, xmp=xmp)


def for_output(metadata: Metadata, size: tuple[int, int]) -> Metadata:
    """The metadata as it should read on upright pixels of ``size`` = (width, height) (module docstring)."""
    try:
        exif = _exif_for_output(metadata.exif, size) if metadata.exif else None
    except _EXIF_ERRORS:
        exif = None
    xmp = None if not metadata.xmp else _xmp_for_output(metadata.xmp, size)
    return Metadata(exif=exif, xmp=xmp)


def _exif_for_output(exif: bytes, size: tuple[int, int]) -> bytes | None:
    tags = _load_exif(exif)
    for tag in _SOURCE_LAYOUT_TAGS:
        tags.pop(tag, None)
    if _ORIENTATION in tags:
        tags[_ORIENTATION] = 1
    if _EXIF_IFD in tags:
        sub = tags.get_ifd(_EXIF_IFD)
        sub[_PIXEL_X], sub[_PIXEL_Y] = size
    return tags.tobytes() if len(tags) else None


def _load_exif(data: bytes) -> PILImage.Exif:
    tags = PILImage.Exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns per odd tag; a run's log must not fill with them
        tags.load(data)
        for ifd in (_EXIF_IFD, _GPS_IFD):  # load sub-IFDs now: tobytes() only writes loaded ones
            if ifd in tags:
                tags.get_ifd(ifd)
    return tags


def _xmp_for_output(xmp: bytes, size: tuple[int, int]) -> bytes:
    xmp = _set_xmp_field(xmp, "tiff:Orientation", 1)
    for name, value in zip(_XMP_SIZE_FIELDS, (*size, *size)):
        xmp = _set_xmp_field(xmp, name, value)
    return xmp


def _set_xmp_field(xmp: bytes, name: str, value: int) -> bytes:
    """Replace an existing simple XMP property, attribute (name="6") or element (<name>6</name>) form."""
    key = re.escape(name.encode())
    new = str(value).encode()
    xmp = re.sub(rb'(\b' + key + rb'\s*=\s*["\'])[^"\']*(["\'])', lambda m: m[1] + new + m[2], xmp)
    return re.sub(rb'(<' + key + rb'>)[^<]*(</' + key + rb'>)', lambda m: m[1] + new + m[2], xmp)


# ---------------------------------------------------------------------------------- writing


def pillow_save_options(metadata: Metadata | None, fmt: str) -> dict:
    """Keyword arguments for Pillow's ``save`` that embed ``metadata`` (already ``for_output``) in ``fmt``."""
    if metadata is None or fmt == "bmp":
        return {}
    exif, xmp = metadata.exif, metadata.xmp
    if fmt == "png":
        options: dict = {"exif": exif} if exif else {}
        if xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"), zip=False)
            options["pnginfo"] = info
        return options
    if fmt == "jpg":
        exif = _fit_jpeg_exif(exif)
        xmp = xmp if xmp and len(xmp) + _JPEG_XMP_HEADER <= _JPEG_MARKER_MAX else None
    if fmt == "tiff":
        return _tiff_options(exif, xmp)
    return {key: value for key, value in (("exif", exif), ("xmp", xmp)) if value}


def _fit_jpeg_exif(exif: bytes | None) -> bytes | None:
    """EXIF that fits one APP1 segment: without the MakerNote if needed, else none."""
    if not exif or len(exif) <= _JPEG_MARKER_MAX:
        return exif
    tags = _load_exif(exif)
    if _EXIF_IFD in tags:
        tags.get_ifd(_EXIF_IFD).pop(_MAKER_NOTE, None)
    smaller = tags.tobytes()
    return smaller if len(smaller) <= _JPEG_MARKER_MAX else None


def _tiff_options(exif: bytes | None, xmp: bytes | None) -> dict:
    tags = _load_exif(exif) if exif else PILImage.Exif()
    if xmp:
        tags[_XMP_TAG] = xmp
    if not len(tags):
        return {}
    options: dict = {"exif": tags.tobytes()}
    if _EXIF_IFD in tags or _GPS_IFD in tags:
        options["compression"] = "raw"  # libtiff (every compressor) cannot write sub-IFDs
    return options


def png_chunks(metadata: Metadata | None) -> list[tuple[bytes, bytes]]:
    """(chunk type, payload) pairs for a PNG written without Pillow (16-bit): eXIf and iTXt XMP."""
    if metadata is None:
        return []
    chunks = []
    if metadata.exif:
        chunks.append((b"eXIf", metadata.exif.removeprefix(b"Exif\x00\x00")))
    if metadata.xmp:
        # iTXt: keyword NUL, compression flag 0, method 0, empty language NUL, empty translation NUL.
        chunks.append((b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + metadata.xmp))
    return chunks
