"""Backend check: run two upscalers (backends or precisions) on the user's images and compare.

In the spirit of ``polygraphy run --onnxrt --trt``: what a user runs after exporting a graph or
building an fp16 engine. Per image: max and mean absolute difference of the 8-bit outputs (in
levels of 255), PSNR, and any NaN/Inf in the float outputs; the check fails when a NaN/Inf
appears, the max difference exceeds ``max_diff`` or the PSNR falls below ``min_psnr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GtasrError
from ..metrics.fullref import psnr as psnr_db
from ..media.images import read_image


@dataclass(frozen=True, kw_only=True)
class ImageCheck:
    path: str
    max_diff: int | None  # 8-bit levels
    mean_diff: float | None
    psnr_db: float | None
    non_finite: int  # NaN/Inf values in either float output
    error: str | None = None

    def failed(self, *, max_diff: int | None, min_psnr: float | None) -> bool:
        if self.error is not None or self.non_finite:
            return True
        if max_diff is not None and self.max_diff > max_diff:
            return True
        return min_psnr is not None and self.psnr_db < min_psnr

    def line(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        psnr = "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.2f}"
        return (f"{self.path}: max diff {self.max_diff}/255, mean {self.mean_diff:.4f}/255, PSNR {psnr} dB, "
                f"NaN/Inf {self.non_finite}")


def _quantise(sr: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.nan_to_num(sr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.int16)


def compare_outputs(path: str, a: np.ndarray, b: np.ndarray) -> ImageCheck:
    """Compare two float [0, 1] outputs of the same image (any shape, equal shapes)."""
    non_finite = int(np.count_nonzero(~np.isfinite(a)) + np.count_nonzero(~np.isfinite(b)))
    qa, qb = _quantise(a), _quantise(b)
    diff = np.abs(qa - qb)
    return ImageCheck(path=path, max_diff=int(diff.max()), mean_diff=float(diff.mean()), psnr_db=psnr_db(qa, qb),
                      non_finite=non_finite)


def check_images(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
                 images: Sequence[Path]) -> list[ImageCheck]:
    """``reference``/``candidate`` map float32 (H, W, 3) in [0, 1] to the 4x output; one row per image.
    An unreadable image is one row with its error; the others are still checked."""

    rows = []
    for path in images:
        try:
            rgb = read_image(path).rgb
            rows.append(compare_outputs(str(path), reference(rgb), candidate(rgb)))
        except GtasrError as err:
            rows.append(ImageCheck(path=str(path), max_diff=None, mean_diff=None, psnr_db=None, non_finite=0,
                                   error=str(err)))
    return rows
