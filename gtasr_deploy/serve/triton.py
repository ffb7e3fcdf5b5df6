"""``gtasr-serve triton``: the whole pipeline (file bytes in, PNG out) behind Triton Inference Server,
through PyTriton (pip extra ``triton``: ``nvidia-pytriton``, which needs numpy < 2 — give it its own
virtual environment).

Model ``gtasr`` (version 1):

==========  ======  =====  ==========================================================================
tensor      dtype   dims   meaning
==========  ======  =====  ==========================================================================
image       BYTES   [1]    an image file as uploaded (PNG, JPEG, WebP, TIFF, BMP; as gtasr-upscale reads)
png         BYTES   [1]    the x4 result as a PNG file (empty when this image failed)
error       BYTES   [1]    empty, or one line saying why this image failed (UTF-8)
==========  ======  =====  ==========================================================================

Each image is decoded, upscaled and encoded exactly as ``gtasr-upscale`` does
(:func:`gtasr_deploy.serve.codec.process_upload`, so EXIF orientation, 16-bit, gray, alpha and the
output checks hold); Triton's dynamic batcher may hand several requests to one call, and a bad
upload fails only its own item (``error``), never the others of the batch. The model options are
gtasr-upscale's (see :mod:`gtasr_deploy.serve.settings`).
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import BackendUnavailableError, GtasrError
from .codec import process_upload

MODEL_NAME = "gtasr"
INPUT, OUTPUT, ERROR = "image", "png", "error"


@dataclass(frozen=True, kw_only=True)
class TritonServeOptions:
    """Where Triton listens and how it batches. Ports: HTTP, gRPC, metrics."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 4
    queue_delay_us: int = 10_000
    max_pixels: int | None = 4_000_000


def upscale_files(files: np.ndarray, sr_fn: Callable, *, max_pixels: int | None) -> dict[str, np.ndarray]:
    """The model's call: (N, 1) object array of file bytes -> {"png": (N, 1), "error": (N, 1)}.

    One item's problem (undecodable bytes, too many pixels, a failed upscale) is its ``error`` line;
    the other items are still upscaled."""
    pngs, errors = [], []
    for item in files.reshape(-1):
        try:
            data, _, _ = process_upload(bytes(item), sr_fn, name="image", fmt="png", max_pixels=max_pixels)
            pngs.append(data)
            errors.append(b"")
        except GtasrError as exc:
            pngs.append(b"")
            errors.append(str(exc).encode("utf-8"))
    shape = (len(pngs), 1)
    return {OUTPUT: np.array(pngs, dtype=np.object_).reshape(shape),
            ERROR: np.array(errors, dtype=np.object_).reshape(shape)}


def libpython_first(env: dict) -> None:
    """Put this Python's own libpython first on ``LD_LIBRARY_PATH`` (in ``env``, e.g. os.environ).

    PyTriton's Python-backend stub is a process that tritonserver starts; it links libpython and
    otherwise finds the system's, which need not be this interpreter's (e.g. pyenv or a venv over
    another Python), and fails at start-up."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *paths])


def serve(upscaler, options: TritonServeOptions, *, on_ready: Callable[[str], None] = print) -> None:
    """Bind ``upscaler`` as model ``gtasr`` and serve until SIGINT/SIGTERM; stops Triton on the way out."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as err:
        raise BackendUnavailableError(f"gtasr-serve triton needs PyTriton ({err}); pip install 'gtasr-deploy[triton]' "
                                      "in its own virtual environment (nvidia-pytriton needs numpy < 2)") from None

    @batch
    def infer(**inputs):
        return upscale_files(inputs[INPUT], upscaler.upscale_float, max_pixels=options.max_pixels)

    libpython_first(os.environ)
    config = TritonConfig(http_address=options.host, http_port=options.http_port, grpc_address=options.host,
                          grpc_port=options.grpc_port, metrics_address=options.host,
                          metrics_port=options.metrics_port)
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL_NAME, infer_func=infer,
                    inputs=[Tensor(name=INPUT, dtype=np.object_, shape=(1,))],
                    outputs=[Tensor(name=OUTPUT, dtype=np.object_, shape=(1,)),
                             Tensor(name=ERROR, dtype=np.object_, shape=(1,))],
                    config=ModelConfig(max_batch_size=options.max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us)))
        on_ready(f"gtasr-serve: Triton model '{MODEL_NAME}' ready on http://{options.host}:{options.http_port} "
                 f"(gRPC {options.grpc_port}); Ctrl-C stops")
        triton.serve()
