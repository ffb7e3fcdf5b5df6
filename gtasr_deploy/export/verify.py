"""Export-time verification: an exported graph must compute what torch computes (SPEC §4).

The one place where export meets the engines: it runs the staged graph on ONNX Runtime's CPU
provider (or OpenVINO's, where that is the runtime installed) and the model on the torch engine
with the same feeds, in both normalisation modes (each tile its own GroupNorm statistics, and
statistics shared through ``norm_stats``), at the static tile or, for a graph with dynamic height
and width, at two different shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, EngineBuildError
from ..model.precond import Denoiser
from ..model.shared_norm import pool_statistics
from ..metrics.fullref import psnr
from ..model.conventions import SIGMA_ONE, to_model_range, to_unit_range
from ..model.schedule import one_step_start
from ..engines.openvino import import_openvino
from ..engines.onnxruntime import import_onnxruntime
from ..engines.onnxruntime import OrtEngine
from ..engines.openvino import OpenVinoEngine
from ..contract import read_onnx_sidecar
from ..engines.torch_engine import TorchEngine
from ..contract import example_inputs

FP32_TOLERANCE = 1e-4  # max abs error vs torch (SPEC §4)
Log = Callable[[str], None]


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


RUNTIMES = {"onnxruntime": "ONNX Runtime CPU", "openvino": "OpenVINO CPU fp32"}


def check_shapes(sidecar: dict) -> list[tuple[int, int]]:
    """LR shapes a graph is verified at: its static tile, or two different ones of a dynamic graph."""
    if sidecar["tile_lr"] is not None:
        return [tuple(sidecar["tile_lr"])]
    m = int(sidecar["size_multiple"])
    return [(m, 2 * m), (2 * m, m)]


def runtime_version(runtime: str) -> str:
    """The installed version of a runtime that verifies and runs graphs (for cache keys)."""
    if runtime == "openvino":
        return import_openvino().get_version()
    if runtime == "onnxruntime":
        return import_onnxruntime().__version__
    raise ConfigError(f"graph runtime {runtime!r}, expected one of {sorted(RUNTIMES)}")


def _open(runtime: str, onnx_path: Path):
    if runtime == "openvino":
        return OpenVinoEngine(onnx_path, precision="fp32", cache_dir=None)

    return OrtEngine(onnx_path, providers="cpu")


def compare_with_torch(model: Denoiser, onnx_path: Path, *, batches: tuple[int, ...],
                       runtime: str = "onnxruntime") -> dict[int, float]:
    """Max |runtime − torch| per batch size on random inputs, over sr and tile_stats, in both modes."""

    shapes = check_shapes(read_onnx_sidecar(onnx_path))
    reference = TorchEngine(model)
    errors = {}
    with _open(runtime, onnx_path) as engine:
        for batch in batches:
            errors[batch] = 0.0
            for tile in shapes:
                feeds = example_inputs(tile, batch, seed=batch)
                stats = engine.tile_statistics(**feeds)
                want_stats = reference.tile_statistics(**feeds)
                pooled = pool_statistics(want_stats)
                errors[batch] = max(errors[batch], _max_abs(engine(**feeds), reference(**feeds)),
                                    _max_abs(stats, want_stats),
                                    _max_abs(engine(**feeds, norm_stats=pooled), reference(**feeds, norm_stats=pooled)))
    return errors


def check_against_torch(model: Denoiser, onnx_path: Path, *, batches: tuple[int, ...], log: Log,
                        runtime: str = "onnxruntime") -> dict[int, float]:
    errors = compare_with_torch(model, onnx_path, batches=batches, runtime=runtime)
    for batch, err in errors.items():
        log(f"{RUNTIMES[runtime]} vs torch, batch {batch} (per-tile and shared statistics): max abs error {err:.3g}")
    worst = max(errors.values())
    if not worst <= FP32_TOLERANCE:
        raise EngineBuildError(f"export: the graph differs from torch by {worst:.3g} max abs, expected "
                               f"<= {FP32_TOLERANCE:g} for fp32; the graph is wrong — please report it")
    return errors


def compare_graphs(reference: Path, candidate: Path, feeds: dict[str, np.ndarray]) -> float:
    """Max |candidate − reference| of two exported graphs on ORT CPU for the same feeds."""

    outputs = []
    for path in (reference, candidate):
        with OrtEngine(path, providers="cpu") as engine:
            outputs.append(engine(**feeds))
    return _max_abs(outputs[1], outputs[0])


def sample_photo_lq(tile_lr: tuple[int, int]) -> np.ndarray | None:
    """A real photo as an LR tile: float32 (1, 3, h, w) in [-1, 1], or None when unavailable.

    matplotlib's grace_hopper.jpg, centre-cropped to the tile's aspect ratio and resized with
    PIL bicubic (antialiased) — the LR a user would feed, not a synthetic pattern."""
    try:
        from matplotlib import cbook
    except ImportError:
        return None
    from PIL import Image

    h, w = tile_lr
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        im = im.convert("RGB")
        width, height = im.size
        crop_w, crop_h = min(width, height * w // h), min(height, width * h // w)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        im = im.crop((left, top, left + crop_w, top + crop_h)).resize((w, h), Image.Resampling.BICUBIC)
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return to_model_range(np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]))


def photo_psnr(fp32_path: Path, fp16_path: Path, tile_lr: tuple[int, int], seed: int = 0) -> float | None:
    """PSNR (dB, [0,1] images) of the fp16 graph's output against the fp32 graph's on a photo.

    One-step inference as the upscaler does it: x_K = up(lq) + eps (seeded), sigma = 1."""

    lq = sample_photo_lq(tile_lr)
    if lq is None:
        return None
    x_k = one_step_start(torch.from_numpy(lq), seed=seed)
    feeds = {"x_t": x_k.numpy(), "lq": lq, "sigma": np.full(1, SIGMA_ONE, np.float32)}
    images = []
    for path in (fp32_path, fp16_path):
        with OrtEngine(path, providers="cpu") as engine:
            images.append(np.clip(to_unit_range(engine(**feeds)), 0.0, 1.0).astype(np.float64))
    return psnr(images[0], images[1], peak=1.0)


def check_fp16(fp32_path: Path, fp16_path: Path, tile_lr: tuple[int, int], *, log: Log) -> tuple[float, float | None]:
    """(max abs error vs the fp32 graph on random inputs, PSNR on a photo or None); refuses non-finite output."""

    error = compare_graphs(fp32_path, fp16_path, example_inputs(tile_lr, 1))
    log(f"fp16 vs fp32 graph on ONNX Runtime CPU, random inputs: max abs error {error:.3g}")
    if not np.isfinite(error):
        raise EngineBuildError(f"export: the fp16 graph {fp16_path.name} produces non-finite values (fp16 overflow "
                               "outside the fp32 islands); use the fp32 graph")
    psnr = photo_psnr(fp32_path, fp16_path, tile_lr)
    if psnr is None:
        log("fp16 vs fp32 PSNR on a photo: skipped (matplotlib's sample photo is not installed: "
            "pip install 'gtasr-deploy[eval]')")
    else:
        log(f"fp16 vs fp32 PSNR on a real photo (grace_hopper.jpg at {tile_lr[0]}x{tile_lr[1]} LR): {psnr:.2f} dB")
    return error, psnr
