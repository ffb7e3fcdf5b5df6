"""One upload through the CLI's own per-file path: decode, upscale, encode, exactly as gtasr-upscale.

The upload is written to a private temp folder and run as a one-job :func:`gtasr_deploy.batch.runner.run_batch`,
so every rule of the CLI (EXIF orientation, 16-bit, gray, alpha, ICC and metadata, output checks,
decompression-bomb guard) holds for the service too, with no second copy of those rules.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..batch.runner import Job, exception_name, run_batch
from ..errors import GtasrError, InputError
from ..media.images import read_image, upscale_alpha
from ..media.resize import format_problem
from ..model.conventions import SCALE

# Output formats a client may ask for; "same" = the upload's own format (as --format same).
FORMATS = ("png", "jpg", "webp", "same")
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "bmp": "image/bmp",
               "tiff": "image/tiff"}
_SOURCE_TO_WRITE = {"png": "png", "jpeg": "jpg", "webp": "webp", "bmp": "bmp", "tiff": "tiff"}


class ProcessingError(GtasrError):
    """The upload decoded, but upscaling or encoding it failed (a server-side problem)."""


def process_upload(data: bytes, sr_fn, *, name: str, fmt: str = "png", quality: int = 95,
                   max_pixels: int | None = None) -> tuple[bytes, str, tuple[int, int]]:
    """(file bytes, written format, (width, height)) of ``sr_fn`` applied to the uploaded image.

    InputError("<name>: <reason>") when the upload is not an image the CLI accepts;
    ProcessingError when a decoded image could not be upscaled or encoded.
    """
    if fmt not in FORMATS:
        raise InputError(f"{name}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not data:
        raise InputError(f"{name}: empty upload (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="gtasr-serve-") as folder:
        src = Path(folder) / "upload"
        atomic_write_bytes(src, data)
        try:  # decoded here too (cheap) so that a bad upload is told apart from a server failure
            image = read_image(src, max_pixels=max_pixels)
        except InputError as exc:
            raise InputError(f"{name}: {str(exc).removeprefix(f'{src}: ')}") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 (whatever a decoder raises on crafted bytes: the upload's fault)
            raise InputError(f"{name}: cannot decode the image ({exception_name(exc)}: "
                             f"{' '.join(str(exc).split())[:200]})") from None
        written = _SOURCE_TO_WRITE[image.source_format] if fmt == "same" else fmt
        problem = format_problem(written, (image.size[0] * SCALE, image.size[1] * SCALE))
        if problem:  # the client's choice of size and format, known before any work: a 400
            raise InputError(f"{name}: {problem}")
        dst = Path(folder) / "out" / f"result.{written}"
        log = io.StringIO()
        summary = run_batch([Job(src=src, rel=Path(name), dst=dst)], sr_fn, quality=quality, max_pixels=max_pixels,
                            progress=False, summary=False, err=log, handle_sigterm=False)
        record = summary.records[-1]
        if record.status != "written":
            reason = (record.reason or "not written").replace(str(src), name).replace(str(dst), "the result")
            raise ProcessingError(f"{name}: {reason}")
        width, height = record.output_size or (0, 0)
        return dst.read_bytes(), written, (width, height)


def bicubic(rgb: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Plain bicubic x``scale`` of float32 (H, W, 3) in [0, 1]: the page's "before" image."""
    return np.stack([upscale_alpha(rgb[..., c], scale) for c in range(3)], axis=-1)
