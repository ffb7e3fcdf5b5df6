"""``Upscaler``: the Python API, a thin facade over options → load → engine → :class:`~gtasr_deploy.inference.Pipeline`.

>>> up = Upscaler("weights.safetensors", seed=0)         # or Upscaler() for the embedded demo weights
>>> up = Upscaler(UpscaleOptions(tile=64, seed=3))       # the same, from one options value
>>> sr = up.upscale(image)                                # HxWx3 uint8 → 4Hx4Wx3 uint8
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .contract import read_onnx_sidecar
from .engines.base import Engine
from .engines.factory import BackendChoice, choose_backend, open_engine
from .engines.device import resolve_device
from .engines.precision import PrecisionChoice, resolve_precision
from .errors import InputError
from .export.cache import cached_graph
from .inference.loader import EMBEDDED_WEIGHTS, LoadedModel, load_denoiser, preset_name
from .inference.memory import call_memory, memory_budget
from .inference.options import UpscaleOptions
from .inference.pipeline import Pipeline, ProgressFn, TilePolicy, default_overlap
from .model.conventions import to_model_range

__all__ = ["Upscaler", "UpscaleOptions", "EMBEDDED_WEIGHTS", "default_overlap", "preset_name"]

LogFn = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


class Upscaler:
    """GTASR x4 upscaler.

    Built from :class:`~gtasr_deploy.inference.options.UpscaleOptions` (``Upscaler(options)`` or
    ``Upscaler.from_options(options)``) or from its fields as keyword arguments, as before
    (``Upscaler("w.safetensors", tile=64, seed=3)``; keywords given with ``options`` replace its
    fields). ``backend`` auto picks the fastest runtime installed (OpenVINO on a CPU when its extra
    is installed — the model's graph is exported once into the graph cache, see
    :mod:`gtasr_deploy.export.cache` — else torch; TensorRT or torch on CUDA). Deterministic for
    fixed (seed, tiles, norm); independent of ``batch`` up to float rounding. ``model``: an already
    loaded :class:`~gtasr_deploy.inference.LoadedModel` instead of ``weights``. ``shared_norm``: the
    older boolean spelling of ``norm``. :meth:`from_engine` wraps an engine that is already open.

    Attributes: ``upscale_options`` (what it was built from, device auto resolved), ``options`` (the resolved
    :class:`~gtasr_deploy.inference.pipeline.TilePolicy`: a static graph's tile filled in),
    ``engine``, ``pipeline``, ``loaded``, ``backend_choice`` and ``precision_choice`` (with reasons)."""

    def __init__(self, weights: str | Path | UpscaleOptions | None = None, *, options: UpscaleOptions | None = None,
                 model: LoadedModel | None = None, shared_norm: bool | None = None, log: LogFn | None = None,
                 **kwargs) -> None:
        if isinstance(weights, UpscaleOptions):  # Upscaler(options)
            options, weights = weights, None
        if weights is not None:
            kwargs["weights"] = weights
        if shared_norm is not None:  # the older boolean spelling
            kwargs["norm"] = "shared" if shared_norm else "tile"
        if options is None:
            options = UpscaleOptions.from_mapping(kwargs)
        elif kwargs:
            options = options.replace(**kwargs)
        self._open(options, model, log or _quiet)

    @classmethod
    def from_options(cls, options: UpscaleOptions, *, model: LoadedModel | None = None,
                     log: LogFn | None = None) -> Upscaler:
        """Load the weights (or the graph) that ``options`` name and open its engine."""
        return cls(options=options, model=model, log=log)

    @classmethod
    def from_engine(cls, engine: Engine, options: UpscaleOptions | None = None, *, model: LoadedModel | None = None,
                    preset: str | None = None, log: LogFn | None = None) -> Upscaler:
        """An Upscaler over ``engine``, already open (nothing is loaded). ``options``: the tiling,
        seed and device (the rest describes how the engine was opened, and is not used here);
        ``model``: what the engine runs, for the run header; ``preset``: the network preset for
        the memory model of ``tile`` auto (default: the model's)."""
        options = options or UpscaleOptions()
        info = engine.info
        self = cls.__new__(cls)
        self.upscale_options = options
        self.loaded = model
        self.model = None if model is None else model.model
        self.backend_choice = BackendChoice(backend=info.backend, reason="an engine already open")
        self.precision_choice = PrecisionChoice(precision=info.precision, reason="the engine's")
        self.cache_filled_s = None
        self._attach(engine, preset if preset is not None or model is None else model.preset, log or _quiet)
        return self

    def with_engine(self, engine: Engine) -> Upscaler:
        """A new Upscaler with this one's options, model and memory model over ``engine`` (e.g. a
        proxy that batches this one's engine calls); this one is left as it is."""
        other = Upscaler.from_engine(engine, self.upscale_options, model=self.loaded, preset=self.memory_preset,
                                     log=self._log)
        other.backend_choice, other.precision_choice = self.backend_choice, self.precision_choice
        other.cache_filled_s = self.cache_filled_s
        return other

    def _open(self, options: UpscaleOptions, model: LoadedModel | None, log: LogFn) -> None:
        """Choose backend and precision, load what that backend needs, open the engine."""
        self.upscale_options = opts = options
        device, onnx = opts.device, opts.onnx
        if device == "auto":  # the Python API's own resolution; the CLI resolves auto itself (LOCAL_RANK)
            device = resolve_device(device)
            self.upscale_options = opts = replace(opts, device=device)
        sidecar = None if onnx is None else read_onnx_sidecar(onnx)
        graph_precision = None if sidecar is None else sidecar["precision"]
        self.backend_choice = choose_backend(opts.backend, device=device, onnx_path=onnx,
                                             graph_precision=graph_precision,
                                             torch_options=opts.compile or opts.channels_last,
                                             precision=opts.precision)
        backend = self.backend_choice.backend
        # an exported graph carries everything the engine needs; only the torch backend needs weights
        needs_model = onnx is None or backend == "torch"
        if model is not None:  # already loaded (e.g. by gtasr-export), used as it is
            self.loaded: LoadedModel | None = model
        else:
            self.loaded = (load_denoiser(opts.weights, network_config=opts.network_config, param_key=opts.param_key,
                                         device=device) if needs_model else None)
        self.model = None if self.loaded is None else self.loaded.model
        self.precision_choice = resolve_precision(opts.precision, device=device, backend=backend, onnx=onnx)
        cache_dir, small_calls = "engines", None
        self.cache_filled_s: float | None = None
        if backend == "openvino" and onnx is None:
            entry = cached_graph(self.model, name=self.loaded.name, runtime="openvino", root=opts.graph_cache, log=log)
            onnx, cache_dir, self.cache_filled_s = entry.onnx_path, entry.folder, entry.filled_s
            if entry.filled_s is not None:
                log(f"graph cache filled in {entry.filled_s:.0f} s; later runs start at once")
            if opts.backend == "auto":  # calls too small to compile a shape for run on torch (engines/openvino.py)
                small_calls = open_engine("torch", model=self.model, device=device,
                                          precision=self.precision_choice.precision, threads=opts.threads)
                self.backend_choice = replace(self.backend_choice, reason=self.backend_choice.reason +
                                              "; images too small to compile a shape for run on torch")
        engine = open_engine(backend, model=self.model, onnx_path=onnx, device=device,
                             precision=self.precision_choice.precision, threads=opts.threads, compile=opts.compile,
                             channels_last=opts.channels_last, cache_dir=cache_dir, small_calls=small_calls)
        preset = self.loaded.preset if self.loaded is not None else sidecar.get("preset")
        self._attach(engine, preset, log)

    def _attach(self, engine: Engine, preset: str | None, log: LogFn) -> None:
        """The pipeline over ``engine`` with this Upscaler's tiling, seed and memory model."""
        opts, info = self.upscale_options, engine.info
        self.engine, self.memory_preset, self._log = engine, preset, log
        self.seed = opts.seed
        if info.tile_lr is not None:
            self.tile_reason = "the graph's static tile"
        elif opts.auto_tile:
            self.tile_reason = "auto: the whole image when it fits in memory, else the largest tiles that fit"
        else:
            self.tile_reason = "given"
        self.memory = call_memory(preset, info.precision, info.backend)
        policy = TilePolicy(tile=None if opts.auto_tile else opts.tile, overlap=opts.tile_overlap, batch=opts.batch,
                            norm=opts.norm, stats=opts.stats)
        self.pipeline = Pipeline(engine, policy, seed=self.seed, log=log,
                                 budget=memory_budget(opts.device, self.memory) if opts.auto_tile else None)
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
