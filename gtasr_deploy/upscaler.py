"""``Upscaler``: the Python API, a thin facade over load → engine → :class:`~gtasr_deploy.inference.Pipeline`.

>>> up = Upscaler("weights.safetensors", seed=0)         # or Upscaler() for the embedded demo weights
>>> sr = up.upscale(image)                                # HxWx3 uint8 → 4Hx4Wx3 uint8
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import read_onnx_sidecar
from .engines.factory import choose_backend, open_engine
from .errors import ConfigError, InputError
from .export.cache import cached_graph
from .inference.loader import EMBEDDED_WEIGHTS, LoadedModel, load_denoiser, preset_name
from .inference.memory import call_memory, memory_budget
from .inference.pipeline import Pipeline, ProgressFn, TilePolicy, default_overlap
from .engines.precision import resolve_precision
from .model.conventions import to_model_range

__all__ = ["Upscaler", "EMBEDDED_WEIGHTS", "default_overlap", "preset_name"]


class Upscaler:
    """GTASR x4 upscaler.

    ``weights``: a ``.pth`` (official, ``param_key`` selects ``params_ema``/``params``) or our
    ``.safetensors``; None → the embedded demo weights. ``onnx``: an exported graph (its sidecar
    gives its shapes and size rule; no weights needed). ``backend``: auto (the fastest runtime
    installed: OpenVINO on a CPU when its extra is installed — the model's graph is exported once
    into the graph cache, see :mod:`gtasr_deploy.export.cache` — else torch; TensorRT or torch on
    CUDA) | torch | onnxruntime | openvino | tensorrt. ``tile``: None/"auto" = the whole image in
    one call when the memory model says it fits, else the largest tiles that fit; LR px (int or
    (h, w)) for fixed tiles; 0 = always the whole image. ``norm``: "shared" (GroupNorm statistics of
    the whole image shared by its tiles) or "tile"; ``stats``: how shared statistics are gathered
    for a tiled image ("downscaled" or "tiles", see :mod:`gtasr_deploy.inference.pipeline`).
    ``precision``: fp32 | bf16 | fp16 | auto (see :mod:`gtasr_deploy.engines.precision`). Deterministic for
    fixed (seed, tiles, norm); independent of ``batch`` up to float rounding. ``model``: an already
    loaded :class:`~gtasr_deploy.inference.LoadedModel` instead of ``weights``. ``compile`` /
    ``channels_last``: torch engine options (see :mod:`gtasr_deploy.engines.torch_engine`).
    ``graph_cache``: the cache folder for ``auto``/``openvino`` without ``onnx`` (default
    ``$GTASR_CACHE`` or ``~/.cache/gtasr_deploy``)."""

    def __init__(self, weights: str | Path | None = None, *, network_config=None, param_key: str = "params_ema",
                 device: str = "cpu", seed: int = 0, tile: int | tuple[int, int] | str | None = None,
                 tile_overlap: int | None = None, batch: int = 1, backend: str = "auto", onnx: str | Path | None = None,
                 precision: str = "auto", threads: int | None = None, norm: str = "shared",
                 shared_norm: bool | None = None, stats: str = "downscaled", model: LoadedModel | None = None,
                 compile: bool = False, channels_last: bool = False, graph_cache: str | Path | None = None,
                 log=None) -> None:
        if shared_norm is not None:  # the older boolean spelling
            norm = "shared" if shared_norm else "tile"
        log = log or (lambda _line: None)
        self.seed = int(seed)
        sidecar = None if onnx is None else read_onnx_sidecar(onnx)
        graph_precision = None if sidecar is None else sidecar["precision"]
        self.backend_choice = choose_backend(backend, device=device, onnx_path=onnx, graph_precision=graph_precision,
                                             torch_options=compile or channels_last, precision=precision)
        backend = self.backend_choice.backend
        # an exported graph carries everything the engine needs; only the torch backend needs weights
        needs_model = onnx is None or backend == "torch"
        if model is not None:  # already loaded (e.g. by gtasr-export), used as it is
            self.loaded: LoadedModel | None = model
        else:
            self.loaded = (load_denoiser(weights, network_config=network_config, param_key=param_key, device=device)
                           if needs_model else None)
        self.model = None if self.loaded is None else self.loaded.model
        self.precision_choice = resolve_precision(precision, device=device, backend=backend, onnx=onnx)
        cache_dir = "engines"
        self.cache_filled_s: float | None = None
        if backend == "openvino" and onnx is None:
            entry = cached_graph(self.model, name=self.loaded.name, runtime="openvino", root=graph_cache, log=log)
            onnx, cache_dir, self.cache_filled_s = entry.onnx_path, entry.folder, entry.filled_s
            if entry.filled_s is not None:
                log(f"graph cache filled in {entry.filled_s:.0f} s; later runs start at once")
        self.engine = open_engine(backend, model=self.model, onnx_path=onnx, device=device,
                                  precision=self.precision_choice.precision, threads=threads, compile=compile,
                                  channels_last=channels_last, cache_dir=cache_dir)
        info = self.engine.info
        preset = self.loaded.preset if self.loaded is not None else sidecar.get("preset")
        if isinstance(tile, str) and tile != "auto":
            raise ConfigError(f"tile {tile!r}: expected an integer number of LR px, 0 (whole image) or 'auto'")
        if isinstance(tile, bool) or not (tile is None or isinstance(tile, (int, tuple, str))):
            raise ConfigError(f"tile {tile!r}: expected an integer number of LR px, 0 (whole image) or 'auto'")
        auto = tile is None or tile == "auto"
        if info.tile_lr is not None:
            self.tile_reason = "the graph's static tile"
        elif auto:
            self.tile_reason = "auto: the whole image when it fits in memory, else the largest tiles that fit"
        else:
            self.tile_reason = "given"
        self.memory = call_memory(preset, info.precision, info.backend)
        self.options = TilePolicy(tile=None if auto else tile, overlap=tile_overlap, batch=batch, norm=norm,
                                  stats=stats)
        self.pipeline = Pipeline(self.engine, self.options, seed=self.seed, log=log,
                                 budget=memory_budget(device, self.memory) if auto else None)
        self.options = self.pipeline.policy  # a static graph's tile filled in

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

    def calls(self, height: int, width: int) -> int:
        """Engine calls for an HxW input image, a statistics pass included: what progress counts."""
        return self.pipeline.cost(height, width).calls

    def upscale_float(self, rgb: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] → float32 (4H, 4W, 3) in [0, 1]."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(f"expected an RGB image of shape (H, W, 3), got {tuple(rgb.shape)}")
        lq = to_model_range(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))
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
