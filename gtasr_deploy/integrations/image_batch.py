"""This package's pipeline on an image batch as ComfyUI and spandrel hold it: float, channels last.

``upscale_batch(upscaler, images)`` takes (B, H, W, C) float in [0, 1] with C = 3 (RGB) or 4 (RGB
and alpha) and returns (B, 4H, 4W, C) float32 in [0, 1]. RGB goes through
:meth:`~gtasr_deploy.upscaler.Upscaler.upscale_float` (the upscaler's tiling, GroupNorm policy, seed
and precision); an alpha channel is upscaled bicubically, as ``gtasr-upscale`` does for RGBA files.
Every image of the batch gets the same noise (a function of the seed and the image size), as the
frames of a video do. ``on_step(done, total)`` is called after every network pass, counted over the
whole batch: a host's progress bar and interrupt check live there (an exception raised from it
stops the batch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..media.images import upscale_alpha
from ..upscaler import Upscaler

StepFn = Callable[[int, int], None]  # (network passes done, passes total) over the whole batch


def batch_passes(upscaler: Upscaler, images_shape: tuple[int, ...]) -> int:
    """Network passes ``upscale_batch`` makes for a batch of this (B, H, W, C) shape."""
    count, height, width = images_shape[:3]
    return count * upscaler.calls(height, width)


def upscale_batch(upscaler: Upscaler, images: np.ndarray, on_step: StepFn | None = None) -> np.ndarray:
    """(B, H, W, 3|4) float in [0, 1] -> (B, 4H, 4W, 3|4) float32 in [0, 1]; see the module docstring."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[3] not in (3, 4) or min(images.shape[:3]) < 1:
        raise InputError(f"expected an image batch of shape (B, H, W, 3 or 4), got {tuple(images.shape)}")
    total, offset = batch_passes(upscaler, images.shape), 0
    outputs = []
    for image in images:
        def progress(done: int, _image_total: int, base: int = offset) -> None:
            if on_step is not None:
                on_step(base + done, total)

        rgb = upscaler.upscale_float(np.ascontiguousarray(image[..., :3]), progress=progress)
        offset += batch_passes(upscaler, (1, *image.shape))
        if image.shape[2] == 4:
            rgb = np.concatenate([rgb, upscale_alpha(image[..., 3], rgb.shape[:2])[..., None]], axis=2)
        outputs.append(rgb)
    return np.stack(outputs)
