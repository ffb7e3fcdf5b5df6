"""ONNX Runtime engine: runs a graph written by ``gtasr-export`` (see :mod:`gtasr_deploy.engines.base`).

The graph's sidecar JSON (``<stem>.json`` next to the ``.onnx``) gives the static LR tile, the
batch range, the size rule and the precision. Inputs and outputs are fp32 host arrays in either
precision (the fp16 graph keeps fp32 I/O). This is the only engine module that imports
``onnxruntime``; execution providers come from :func:`gtasr_deploy.engines.providers.select_providers`
(CPU, or CUDA / TensorRT with onnxruntime-gpu on an NVIDIA machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from ..export.trt_cache import read_onnx_sidecar
from .base import Engine, EngineInfo

INPUTS = ("x_t", "lq", "sigma")
OUTPUT = "sr"
CPU_EP = "CPUExecutionProvider"
INSTALL_HINT = "pip install 'gtasr-deploy[onnx]'"


def import_onnxruntime():
    """The ``onnxruntime`` module, or BackendUnavailableError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            f"onnxruntime backend: the 'onnxruntime' module is not installed; install it with {INSTALL_HINT} "
            "(or 'gtasr-deploy[cuda]' for onnxruntime-gpu)") from err
    return onnxruntime


def _providers(requested: str, sidecar: dict, cache_dir: str | Path) -> list[tuple[str, dict]]:
    """Provider list from providers.select_providers when that module is present, else CPU only."""
    try:
        from .providers import select_providers
    except ImportError:
        if str(requested).lower() not in ("auto", "cpu", CPU_EP.lower()):
            raise BackendUnavailableError(f"onnxruntime provider {requested!r} is not supported by this install; "
                                          "request 'cpu'") from None
        return [(CPU_EP, {})]
    return select_providers(requested, fp16=sidecar["precision"] == "fp16", cache_dir=cache_dir,
                            onnx_sidecar=sidecar)


class OrtEngine(Engine):
    """D through an ONNX Runtime session over one exported graph (static tile, dynamic batch).

    ``providers``: "auto" (TensorRT EP → CUDA EP → CPU, whatever is installed), "cpu", "cuda" or
    "tensorrt". ``threads``: intra-op threads (None = ONNX Runtime's default, one per core).
    ``cache_dir``: where the TensorRT EP keeps its engines and timing cache."""

    def __init__(self, onnx_path: str | Path, *, providers: str = "auto", threads: int | None = None,
                 cache_dir: str | Path = "engines") -> None:
        ort = import_onnxruntime()
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ConfigError(f"onnxruntime engine: graph {onnx_path} not found; export one with gtasr-export")
        sidecar = read_onnx_sidecar(onnx_path)
        provider_list = _providers(providers, sidecar, cache_dir)
        if any(name == "TensorrtExecutionProvider" for name, _ in provider_list):
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"onnxruntime engine: threads={threads}, expected >= 1 (or None for the default)")
            options.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                             providers=[name for name, _ in provider_list],
                                             provider_options=[opts for _, opts in provider_list])
        tile = tuple(sidecar["tile_lr"])
        self._check_graph(onnx_path, tile, sidecar["scale"])
        batch = sidecar["batch"]
        self.info = EngineInfo(backend="onnxruntime", device=self._session.get_providers()[0],
                               precision=sidecar["precision"], size_multiple=int(sidecar["size_multiple"]),
                               tile_lr=tile, batch_range=(batch["min"], batch["opt"], batch["max"]),
                               scale=int(sidecar["scale"]))
        self.path = onnx_path

    def _check_graph(self, onnx_path: Path, tile: tuple[int, int], scale: int) -> None:
        """The graph must be ours and agree with its sidecar (cheap: no hashing of large files)."""
        got = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        if sorted(got) != sorted(INPUTS) or outputs != [OUTPUT]:
            raise ConfigError(f"onnxruntime engine: {onnx_path} has inputs {sorted(got)} and outputs {outputs}, "
                              f"expected inputs {list(INPUTS)} and output ['{OUTPUT}']; re-export with gtasr-export")
        h, w = tile
        expected = {"x_t": [3, h * scale, w * scale], "lq": [3, h, w]}
        for name, dims in expected.items():
            if list(got[name][1:]) != dims:
                raise ConfigError(f"onnxruntime engine: {onnx_path} input '{name}' is {got[name]}, but its sidecar "
                                  f"says tile {h}x{w} (expected [N, {', '.join(map(str, dims))}]); re-export it")

    def _run(self, x_t: np.ndarray, lq: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        (sr,) = self._session.run([OUTPUT], {"x_t": x_t, "lq": lq, "sigma": sigma})
        return sr

    def close(self) -> None:
        self._session = None
