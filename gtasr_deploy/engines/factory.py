"""Open an engine by backend name: a dict of openers, no isinstance chains.

``auto`` picks the fastest backend that can run here: TensorRT (importable and a CUDA GPU, with an
ONNX graph to build from), else ONNX Runtime (an ONNX graph given and onnxruntime importable), else
torch. Backend modules are imported lazily, so a missing optional backend costs nothing until used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError
from .base import Engine

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")


def _need(value, what: str, backend: str):
    if value is None:
        raise ConfigError(f"engine '{backend}': needs {what}")
    return value


def _open_torch(*, model, device, precision, compile=False, channels_last=False, **_) -> Engine:
    from .torch_engine import TorchEngine

    return TorchEngine(_need(model, "a model (weights)", "torch"), device=device, precision=precision,
                       compile=compile, channels_last=channels_last)


def _open_onnxruntime(*, onnx_path, device, threads, **_) -> Engine:
    from .onnxruntime import OrtEngine

    providers = "cpu" if str(device) == "cpu" else "auto"
    return OrtEngine(_need(onnx_path, "an exported ONNX graph (onnx_path)", "onnxruntime"), providers=providers,
                     threads=threads)


def _open_openvino(*, onnx_path, precision, threads, **_) -> Engine:
    from .openvino import OpenVinoEngine

    return OpenVinoEngine(_need(onnx_path, "an exported ONNX graph (onnx_path)", "openvino"), precision=precision,
                          threads=threads)


def _open_tensorrt(*, onnx_path, **_) -> Engine:
    from .tensorrt import TensorRTEngine

    return TensorRTEngine.from_onnx(_need(onnx_path, "an exported ONNX graph (onnx_path)", "tensorrt"))


def _tensorrt_usable() -> bool:
    try:
        from .tensorrt_build import explain_unavailable
    except ImportError:
        return False
    return explain_unavailable() is None


def _onnxruntime_usable() -> bool:
    try:
        from .onnxruntime import import_onnxruntime

        import_onnxruntime()
    except BackendUnavailableError:
        return False
    return True


def _auto_backend(*, model, onnx_path, device) -> str:
    """The backend ``auto`` resolves to for these arguments on this machine."""
    if onnx_path is not None and str(device) != "cpu" and _tensorrt_usable():
        return "tensorrt"
    if onnx_path is not None and _onnxruntime_usable():
        return "onnxruntime"
    return "torch"


_OPENERS: dict[str, Callable[..., Engine]] = {
    "torch": _open_torch,
    "onnxruntime": _open_onnxruntime,
    "openvino": _open_openvino,
    "tensorrt": _open_tensorrt,
}


def open_engine(backend: str, *, model=None, onnx_path: str | Path | None = None, device: str = "cpu",
                precision: str = "fp32", threads: int | None = None, compile: bool = False,
                channels_last: bool = False) -> Engine:
    """An :class:`~gtasr_deploy.engines.base.Engine` for ``backend`` in auto|torch|onnxruntime|tensorrt.

    ``model``: a Denoiser (torch). ``onnx_path``: a graph from gtasr-export (onnxruntime, tensorrt;
    its precision comes from the graph, so ``precision`` applies to torch only). ``device``: "cpu"
    keeps onnxruntime on its CPU provider; anything else lets it use CUDA/TensorRT providers."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = _auto_backend(model=model, onnx_path=onnx_path, device=device)
    return _OPENERS[backend](model=model, onnx_path=onnx_path, device=device, precision=precision, threads=threads,
                             compile=compile, channels_last=channels_last)
