"""``Upscaler``: the Python API, a thin facade over load → engine → :class:`~gtasr_deploy.inference.Pipeline`.

>>> up = Upscaler("weights.safetensors", seed=0)         # or Upscaler() for the embedded demo weights
>>> sr = up.upscale(image)                                # HxWx3 uint8 → 4Hx4Wx3 uint8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .engines.factory import open_engine
from .errors import ConfigError, InputError
from .inference.loader import EMBEDDED_WEIGHTS, LoadedModel, load_denoiser, preset_name
from .inference.memory import auto_tile, available_bytes
from .inference.pipeline import Pipeline, ProgressFn, TilePolicy, default_overlap
from .precision import resolve_precision

DEFAULT_TILE = {"paper": 256, "demo": 128}
__all__ = ["Upscaler", "DEFAULT_TILE", "EMBEDDED_WEIGHTS", "default_tile", "default_overlap", "preset_name"]


def default_tile(size_multiple: int, preset: str | None = None) -> int:
    """Default LR tile: 256 for the paper preset (SPEC §3), 128 for demo, else 256 rounded to the rule.
    ``gtasr-export`` uses the same default, so exported graphs and the torch backend cut alike."""
    if preset in DEFAULT_TILE:
        return DEFAULT_TILE[preset]
    return max(size_multiple, -(-256 // size_multiple) * size_multiple)


class Upscaler:
    """GTASR x4 upscaler.

    ``weights``: a ``.pth`` (official, ``param_key`` selects ``params_ema``/``params``) or our
    ``.safetensors``; None → the embedded demo weights. ``onnx``: an exported graph (its sidecar
    gives tile and size rule; no weights needed). ``tile``: LR px, 0 = whole image (torch only),
    None/"auto" = the preset's tile, smaller when free memory is short. ``norm``: "shared" (GroupNorm
    statistics pooled over an image's tiles; two passes when there is more than one tile) or "tile".
    ``precision``: fp32 | bf16 | fp16 | auto (see :mod:`gtasr_deploy.precision`). Deterministic for
    fixed (seed, tile, overlap, norm); independent of ``batch`` up to float rounding. ``model``: an
    already loaded :class:`~gtasr_deploy.inference.LoadedModel` instead of ``weights``. ``compile`` /
    ``channels_last``: torch engine options (see :mod:`gtasr_deploy.engines.torch_engine`)."""

    def __init__(self, weights: str | Path | None = None, *, network_config=None, param_key: str = "params_ema",
                 device: str = "cpu", seed: int = 0, tile: int | str | None = None, tile_overlap: int | None = None,
                 batch: int = 1, backend: str = "torch", onnx: str | Path | None = None, precision: str = "auto",
                 threads: int | None = None, norm: str = "shared", shared_norm: bool | None = None,
                 model: LoadedModel | None = None, compile: bool = False, channels_last: bool = False,
                 log=None) -> None:
        if shared_norm is not None:  # the older boolean spelling
            norm = "shared" if shared_norm else "tile"
        self.seed = int(seed)
        # an exported graph carries everything the engine needs; only the torch backend needs weights
        needs_model = onnx is None or backend == "torch"
        if model is not None:  # already loaded (e.g. by gtasr-export), used as it is
            self.loaded: LoadedModel | None = model
        else:
            self.loaded = (load_denoiser(weights, network_config=network_config, param_key=param_key, device=device)
                           if needs_model else None)
        self.model = None if self.loaded is None else self.loaded.model
        self.precision_choice = resolve_precision(precision, device=device, backend=backend, onnx=onnx)
        self.engine = open_engine(backend, model=self.model, onnx_path=onnx, device=device,
                                  precision=self.precision_choice.precision, threads=threads, compile=compile,
                                  channels_last=channels_last)
        info = self.engine.info
        preset = self.loaded.preset if self.loaded is not None else None
        self.tile_reason = "given"
        if info.tile_lr is not None:
            tile, self.tile_reason = info.tile_lr[0], "the graph's static tile"
        elif tile is None or tile == "auto":
            default = default_tile(info.size_multiple, preset)
            tile = auto_tile(default, info.size_multiple, preset=preset, precision=info.precision, batch=batch,
                             available=available_bytes(device))
            self.tile_reason = "auto: the preset's tile" if tile == default else "auto: smaller, for free memory"
        elif not isinstance(tile, int) or isinstance(tile, bool):
            raise ConfigError(f"tile {tile!r}: expected an integer number of LR px, 0 (whole image) or 'auto'")
        if tile_overlap is None:
            tile_overlap = default_overlap(tile) if tile else 0
        self.options = TilePolicy(tile=tile, overlap=tile_overlap, batch=batch, norm=norm)
        self.pipeline = Pipeline(self.engine, self.options, seed=self.seed, log=log)

    @property
    def weights_label(self) -> str:
        """One line naming the weights, for run headers."""
        if self.loaded is None:
            return "weights inside the exported graph"
        return self.loaded.label

    @property
    def preset_name(self) -> str | None:
        return None if self.loaded is None else self.loaded.preset

    def work(self, height: int, width: int) -> tuple[int, int]:
        """(tiles, network passes per tile) for an HxW input image."""
        return self.pipeline.work(height, width)

    def upscale_float(self, rgb: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] → float32 (4H, 4W, 3) in [0, 1]."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f"expected an RGB image of shape (H, W, 3), got {tuple(rgb.shape)}")
        lq = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) * 2.0 - 1.0
        sr = self.pipeline(lq, progress=progress)
        return np.ascontiguousarray(sr.transpose(1, 2, 0))

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """uint8/uint16 (H, W, 3) or (H, W) → same dtype at 4x. Gray input gives gray output."""
        image = np.asarray(image)
        if image.dtype not in (np.uint8, np.uint16):
            raise InputError(f"expected a uint8 or uint16 image, got dtype {image.dtype}")
        peak = float(np.iinfo(image.dtype).max)
        gray = image.ndim == 2
        rgb = np.repeat(image[..., None], 3, axis=2) if gray else image[..., :3]
        sr = self.upscale_float(rgb.astype(np.float32) / peak)
        if gray:
            sr = sr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601 luma
        return np.rint(sr * peak).astype(image.dtype)

    def close(self) -> None:
        self.engine.close()
