"""Open an engine by backend name: a dict of openers, no isinstance chains.

``auto`` (:func:`choose_backend`) picks the fastest runtime installed for the device: on a CUDA
device TensorRT (importable, with an ONNX graph to build from), else torch; on the CPU OpenVINO
when its extra is installed (with no graph given, the model's graph is exported once into a cache
by the caller), else ONNX Runtime for a given graph, else torch. Backend modules are imported
lazily, so a missing optional backend costs nothing until used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..contract import read_onnx_sidecar
from ..errors import BackendUnavailableError, ConfigError
from .backends import FACTS, NAMES
from .base import Engine
from .onnxruntime import OrtEngine, import_onnxruntime
from .openvino import OpenVinoEngine
from .tensorrt import TensorRTEngine
from .tensorrt_build import explain_unavailable
from .torch_engine import TorchEngine

BACKENDS = ("auto", *NAMES)
GRAPH_NEED = "an exported ONNX graph (onnx_path)"
EXPORT_MODULES = ("onnx", "onnxscript")  # what exporting a graph into the cache needs


def _need(value, what: str, backend: str):
    if value is None:
        raise ConfigError(f"engine '{backend}': needs {what}")
    return value


def _open_torch(*, model, device, precision, compile=False, channels_last=False, **_) -> Engine:
    return TorchEngine(_need(model, "a model (weights)", TorchEngine.facts.name), device=device,
                       precision=precision, compile=compile, channels_last=channels_last)


def _open_onnxruntime(*, onnx_path, device, threads, **_) -> Engine:
    providers = "cpu" if str(device) == "cpu" else "auto"
    return OrtEngine(_need(onnx_path, GRAPH_NEED, OrtEngine.facts.name), providers=providers, threads=threads)


def _open_openvino(*, onnx_path, precision, threads, cache_dir="engines", small_calls=None, **_) -> Engine:
    return OpenVinoEngine(_need(onnx_path, GRAPH_NEED, OpenVinoEngine.facts.name), precision=precision,
                          threads=threads, cache_dir=cache_dir, small_calls=small_calls)


def _open_tensorrt(*, onnx_path, **_) -> Engine:
    return TensorRTEngine.from_onnx(_need(onnx_path, GRAPH_NEED, TensorRTEngine.facts.name))


def _tensorrt_usable() -> bool:
    return explain_unavailable() is None


def _onnxruntime_usable() -> bool:
    try:
        import_onnxruntime()
    except BackendUnavailableError:
        return False
    return True


def _openvino_usable(*, needs_export: bool) -> bool:
    """OpenVINO importable, and (to export a graph for it) onnx and onnxscript too."""
    if not OpenVinoEngine.facts.installed():
        return False
    return not needs_export or all(importlib.util.find_spec(name) is not None for name in EXPORT_MODULES)


@dataclass(frozen=True, kw_only=True)
class BackendChoice:
    backend: str
    reason: str


def choose_backend(requested: str, *, device: str, onnx_path=None, graph_precision: str | None = None,
                   torch_options: bool = False, precision: str = "auto") -> BackendChoice:
    """The backend to run and why; ``auto`` picks the fastest runtime installed here (module docstring).

    ``torch_options``: options only torch has (compile, channels-last) were asked for."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}; valid backends: {', '.join(BACKENDS)}")
    if requested != "auto":
        return BackendChoice(backend=requested, reason="requested")
    torch, ort, openvino, tensorrt = (cls.facts for cls in (TorchEngine, OrtEngine, OpenVinoEngine, TensorRTEngine))
    if torch_options:
        return BackendChoice(backend=torch.name, reason="--compile/--channels-last are torch options")
    if str(device) != "cpu":
        if onnx_path is not None and _tensorrt_usable():
            return BackendChoice(backend=tensorrt.name, reason="a CUDA GPU with TensorRT and an exported graph")
        return BackendChoice(backend=torch.name, reason="CUDA device")
    openvino_precision = precision == "auto" or precision in openvino.precisions
    if onnx_path is not None:
        if graph_precision in openvino.graph_precisions and openvino_precision \
                and _openvino_usable(needs_export=False):
            return BackendChoice(backend=openvino.name, reason="the fastest CPU runtime installed")
        if _onnxruntime_usable():
            return BackendChoice(backend=ort.name, reason="an exported graph given")
        return BackendChoice(backend=torch.name, reason="no runtime for the graph is installed")
    if openvino_precision and _openvino_usable(needs_export=True):
        return BackendChoice(backend=openvino.name, reason="the fastest CPU runtime installed")
    return BackendChoice(backend=torch.name, reason=f"OpenVINO is not installed ({openvino.install_hint} "
                                                    "runs faster on CPUs)")


_OPENERS: dict[str, Callable[..., Engine]] = {
    TorchEngine.facts.name: _open_torch,
    OrtEngine.facts.name: _open_onnxruntime,
    OpenVinoEngine.facts.name: _open_openvino,
    TensorRTEngine.facts.name: _open_tensorrt,
}


def open_engine(backend: str, *, model=None, onnx_path: str | Path | None = None, device: str = "cpu",
                precision: str = "fp32", threads: int | None = None, compile: bool = False,
                channels_last: bool = False, cache_dir: str | Path = "engines", small_calls: Engine | None = None) -> Engine:
    """An :class:`~gtasr_deploy.engines.base.Engine` for ``backend``: auto or a name of :data:`.backends.NAMES`.

    ``model``: a Denoiser (torch). ``onnx_path``: a graph from gtasr-export (the backends whose facts
    say ``graph``; ONNX Runtime and TensorRT run the graph's own precision, so ``precision`` applies
    to torch and OpenVINO only). ``device``: "cpu" keeps onnxruntime on its CPU provider; anything
    else lets it use CUDA/TensorRT providers. ``small_calls``: OpenVINO's engine for the calls too
    small to compile a shape for (see :mod:`.openvino`)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        graph_precision = None
        if onnx_path is not None:
            graph_precision = read_onnx_sidecar(onnx_path)["precision"]
        backend = choose_backend("auto", device=device, onnx_path=onnx_path, graph_precision=graph_precision,
                                 torch_options=compile or channels_last).backend
        if FACTS[backend].graph and onnx_path is None:
            backend = TorchEngine.facts.name  # no graph here to run; the Upscaler exports one into its cache
    return _OPENERS[backend](model=model, onnx_path=onnx_path, device=device, precision=precision, threads=threads,
                             compile=compile, channels_last=channels_last, cache_dir=cache_dir, small_calls=small_calls)
