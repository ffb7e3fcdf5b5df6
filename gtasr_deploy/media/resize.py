"""Output sizes other than the model's x4: the size maths and one high-quality resize.

The model always runs at x4; a requested size is reached afterwards by resizing its output with
Lanczos in float32. Shrinking uses Pillow's Lanczos (a = 3), whose kernel widens by the reduction
factor, so it is antialiased — no aliasing or moiré from skipped pixels; enlarging (a factor above
4) uses OpenCV's Lanczos (a = 4), which needs no antialiasing. Colour, alpha and 16-bit data go
through the same float32 path, so nothing is quantised to 8 bit in between.

Python API (the CLI does the same)::

    sr = upscaler.upscale(pixels)                                  # x4, same dtype
    size = OutputSize(outscale=2).target(pixels.shape[1], pixels.shape[0])
    sr2 = resize_image(sr, size)                                   # x2, same dtype
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage

from ..errors import InputError
from ..contract import SCALE

MODEL_SCALE = SCALE
MAX_SIDE = 65_535  # JPEG's limit and far beyond what memory allows for a float32 image
FORMAT_MAX_SIDE = {"webp": 16_383, "jpg": 65_535}  # what the encoders can write, per side


@dataclass(frozen=True, kw_only=True)
class OutputSize:
    """The requested output size, in one of four ways (at most one field set; none = x4).

    ``outscale``: factor relative to the input (> 0, any float); ``width`` / ``height`` /
    ``long_side``: that many pixels, the other side from the input's aspect ratio.
    """

    outscale: float | None = None
    width: int | None = None
    height: int | None = None
    long_side: int | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in vars(self).items() if v is not None}
        if len(given) > 1:
            raise InputError(f"give one output size, not {' and '.join(given)}")
        for name, value in given.items():
            if not (math.isfinite(value) and value > 0) or (name != "outscale" and value != int(value)):
                expected = "a finite number > 0" if name == "outscale" else "a whole number of pixels >= 1"
                raise InputError(f"output {name} {value!r} is not {expected}")

    @property
    def is_model_size(self) -> bool:
        """True when nothing beyond the model's x4 is asked for."""
        return all(v is None for v in vars(self).values()) or self.outscale == MODEL_SCALE

    def target(self, width: int, height: int, *, max_pixels: int | None = None) -> tuple[int, int]:
        """(width, height) of the output for a (width, height) input; sides rounded, >= 1 px.

        InputError when a side would exceed ``MAX_SIDE``, or when the area of a requested size
        (anything but the model's own x4) would exceed ``max_pixels`` (None or 0: no limit):
        checked here, before any pixel is decoded, resized or allocated.
        """
        if self.outscale is not None:
            size = (_round(width * self.outscale), _round(height * self.outscale))
        elif self.width is not None:
            size = (self.width, _round(height * self.width / width))
        elif self.height is not None:
            size = (_round(width * self.height / height), self.height)
        elif self.long_side is not None:
            factor = self.long_side / max(width, height)
            size = (_round(width * factor), _round(height * factor))
        else:
            size = (width * MODEL_SCALE, height * MODEL_SCALE)
        if max(size) > MAX_SIDE:
            raise InputError(f"output would be {size[0]}x{size[1]} px, over {MAX_SIDE:,} px per side "
                             f"(input {width}x{height}); ask for a smaller size")
        area = size[0] * size[1]
        if max_pixels and area > max_pixels and not self.is_model_size:
            raise InputError(f"output would be {size[0]}x{size[1]} = {area:,} px, over --max-pixels {max_pixels:,} "
                             f"(input {width}x{height}); ask for a smaller size or raise --max-pixels")
        return size

    def describe(self) -> str:
        """One line saying what is done, e.g. 'outscale 8: x4 by the model, then x2 Lanczos'."""
        if self.is_model_size:
            return "output x4 (the model's own scale, no resize)"
        if self.outscale is not None:
            step = self.outscale / MODEL_SCALE
            kind = "Lanczos" if step > 1 else "antialiased Lanczos downscale"
            return f"outscale {self.outscale:g}: x4 by the model, then x{step:.4g} {kind}"
        name, value = next((k, v) for k, v in vars(self).items() if v is not None)
        other = {"width": "height", "height": "width", "long_side": "short side"}[name]
        return (f"{name.replace('_', ' ')} {value} px: x4 by the model, then Lanczos to that size "
                f"({other} from the aspect ratio; antialiased where it shrinks)")


def format_problem(fmt: str, size: tuple[int, int]) -> str | None:
    """Why a (width, height) picture cannot be written as ``fmt`` (a side over what the format
    holds: WebP 16,383 px, JPEG 65,535 px), or None; known before any work, so asked first."""
    limit = FORMAT_MAX_SIDE.get(fmt)
    if limit is None or max(size) <= limit:
        return None
    return (f"the output would be {size[0]}x{size[1]} px, over {limit:,} px per side, the most a {fmt} "
            "file holds; choose png, or a smaller size")


def _round(value: float) -> int:
    """Round half up (not to even), at least 1 px."""
    return max(1, math.floor(value + 0.5))


def resize_planes(rgb: np.ndarray, alpha: np.ndarray | None,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize float32 ``rgb`` (H, W, 3) and ``alpha`` (H, W) or None in [0, 1] to ``size`` = (width, height).

    Both get the same kernel, so colour and alpha edges stay aligned; results clipped to [0, 1].
    """
    return resize_image(rgb, size), None if alpha is None else resize_image(alpha, size)


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of (H, W) or (H, W, C) pixels to ``size`` = (width, height), dtype kept.

    uint8 / uint16 are resized in float32 and rounded back (16-bit stays 16-bit); float arrays
    are taken as [0, 1] and come back float32 clipped to [0, 1]. Same size: returned unchanged.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"resize_image: size must be >= 1 px, got {size}")
    if pixels.shape[1] == width and pixels.shape[0] == height:
        return pixels
    if pixels.dtype == np.uint8 or pixels.dtype == np.uint16:
        peak = float(np.iinfo(pixels.dtype).max)
        scaled = _resize_float(pixels.astype(np.float32) / np.float32(peak), size)
        return np.rint(scaled * peak).astype(pixels.dtype)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"resize_image: expected uint8, uint16 or float pixels, got {pixels.dtype}")
    return _resize_float(pixels.astype(np.float32, copy=False), size)


def _resize_float(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    planes = values[..., None] if values.ndim == 2 else values
    if size[0] >= planes.shape[1] and size[1] >= planes.shape[0]:
        # Enlarging needs no antialiasing; OpenCV does all channels at once, on several threads.
        result = cv2.resize(planes, size, interpolation=cv2.INTER_LANCZOS4).reshape(size[1], size[0], -1)
    else:
        # Pillow's "F" mode resamples float32 exactly (no 8-bit step) with the kernel widened by
        # the reduction factor; OpenCV's INTER_LANCZOS4 is not antialiased when shrinking.
        result = np.stack([np.asarray(PILImage.fromarray(np.ascontiguousarray(planes[..., c]))
                                      .resize(size, PILImage.Resampling.LANCZOS))
                           for c in range(planes.shape[2])], axis=-1)
    result = np.clip(result, 0.0, 1.0)
    return result[..., 0] if values.ndim == 2 else result
