"""OpenVINO engine: the exported graph compiled for the CPU, fp32 or bf16 (see :mod:`.base`).

Reads the same ``gtasr-export`` graph and sidecar as ONNX Runtime (the graph contract in
:mod:`gtasr_deploy.contract`). ``precision`` sets OpenVINO's inference precision hint: ``bf16``
runs the convolutions and matmuls in bf16 on CPUs with native bf16 (AMX, AVX512-BF16) while
OpenVINO keeps its own fp32 islands; ``fp32`` is exact fp32. Compiled models are cached on disk in
``<cache_dir>/openvino`` (OpenVINO's model cache, keyed by the graph's content, the device, the
compile settings and the OpenVINO version — like the TensorRT engine cache, a second run does not
compile again). A graph with dynamic height and width runs any LR size in one call (the whole
image). A large call gets a model compiled for its exact shape; a small call runs on the graph's
dynamic-shape model, compiled once and kept in the disk cache (0.2 s to load again) — or, under
``--backend auto``, on torch (``small_calls``), which is faster there for a one-off call. Measured
on a 2-core Xeon, fp32, the first call of a shape in a fresh process (one process per number):
paper network at 128² LR: torch 9.0 s, static 5.7 s + 4-5 s compile, dynamic 12.0 s; at 64²:
torch 1.9 s, dynamic 2.4 s; at 320x256: static 33.4 s + 4.2 s compile (an earlier session on the
same machine type: static 27 s + 5 s, dynamic 41 s, torch 43.5 s); demo network at 256x384: torch
1.44 s, static 1.05 s + 1.1 s compile, dynamic 1.3 s + 0.2 s.
Compiling a shape pays where the call is long next to the compilation; :func:`static_pays` draws
that line from the measured torch-vs-static break-evens. Per-shape models are not written to the
disk cache (which would hold a copy of the weights per shape); a few recent ones stay in memory.
This is the only module that imports ``openvino``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import INPUTS, OUTPUTS, graph_feeds, read_onnx_sidecar
from ..errors import BackendUnavailableError, ConfigError
from .base import BackendFacts, Engine, EngineInfo

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}
# Compiles the fp32 graph in fp32 or bf16, on the CPU (its GPU plugin is not used by this package).
# memory_factor: OpenVINO's compiled model keeps more activations alive than torch eager: peak growth of
# one call, demo weights, LR 128² → 256²: fp32 12.8 kB vs torch's 7.1 kB per LR px (1.8×), bf16 9.8 vs
# 4.4 (2.2×); measured on this project's 2-core CPU machine.
FACTS = BackendFacts(name="openvino", precisions=tuple(PRECISION_HINTS), devices=("cpu",), extra="openvino",
                     modules=("openvino",), graph=True, graph_precisions=("fp32",), native_bf16=True,
                     memory_factor=2.3)
INSTALL_HINT = FACTS.install_hint
SHAPES_KEPT = 4  # compiled shapes of a dynamic graph kept in memory (tiles, whole images, statistics pass)
# A call compiles its own static shape when LR px (batch included) x sqrt(weights) reaches this: the
# one-off break-evens against torch measured on the 2-core Xeon (module docstring) are ~25k LR px for the
# paper network (172M weights: 3.3e8) and ~265k for the demo network (1.8M: 3.5e8); compile time grows
# more slowly than the weights, call time about as fast, hence the square root.
STATIC_WORK = 3.4e8


def static_pays(lr_px: int, weights: int) -> bool:
    """Whether a call of ``lr_px`` LR px on a graph of ``weights`` weights gets a model compiled for its shape."""
    return lr_px * weights ** 0.5 >= STATIC_WORK


def import_openvino():
    """The ``openvino`` module, or BackendUnavailableError naming the extra to install."""
    try:
        import openvino
    except ImportError as err:
        raise BackendUnavailableError(f"openvino backend: the 'openvino' module is not installed; install it with "
                                      f"{INSTALL_HINT}") from err
    return openvino


class OpenVinoEngine(Engine):
    """D through an OpenVINO compiled model of one exported graph (dynamic batch; dynamic or static LR size).

    ``cache_dir`` None: no compiled-model cache (a graph compiled once, e.g. to verify it).
    ``small_calls``: an engine of the same network (torch) that runs the calls of a dynamic graph too
    small for a shape of their own to pay (:func:`static_pays`), instead of the dynamic model."""

    facts = FACTS

    def __init__(self, onnx_path: str | Path, *, precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = "engines", device: str = "CPU", small_calls: Engine | None = None) -> None:
        ov = import_openvino()
        onnx_path = Path(onnx_path)
        if precision not in PRECISION_HINTS:
            raise ConfigError(f"openvino engine: precision {precision!r}, expected one of {list(PRECISION_HINTS)}")
        if not onnx_path.is_file():
            raise ConfigError(f"openvino engine: graph {onnx_path} not found; export one with gtasr-export")
        sidecar = read_onnx_sidecar(onnx_path)
        if sidecar["precision"] not in self.facts.graph_precisions:
            raise ConfigError(f"openvino engine: {onnx_path} is an {sidecar['precision']} graph; give the fp32 graph "
                              "(OpenVINO chooses bf16 itself with --precision bf16)")
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if cache_dir is not None:
            config["CACHE_DIR"] = str(Path(cache_dir) / "openvino")
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"openvino engine: threads={threads}, expected >= 1 (or None for the default)")
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._core, self._device, self._config = ov.Core(), device, config
        self._requests: dict[tuple[int, ...], object] = {}  # input shape -> infer request (recent first)
        self._dynamic = None  # the dynamic model's infer request, compiled on the first small call
        self._small = small_calls
        try:
            self._model = self._core.read_model(str(onnx_path))
            names = {t.get_any_name() for t in (*self._model.inputs, *self._model.outputs)}
            self.weights = sum(int(np.prod(list(op.get_output_shape(0)))) for op in self._model.get_ordered_ops()
                               if op.get_type_name() == "Constant")
            if sidecar["tile_lr"] is not None:  # one static shape: compiled once, through the disk cache
                self._requests[()] = self._core.compile_model(self._model, device, config).create_infer_request()
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"openvino engine: cannot compile {onnx_path} ({first}); re-export it") from None
        if names != set(INPUTS) | set(OUTPUTS):
            raise ConfigError(f"openvino engine: {onnx_path} has tensors {sorted(names)}, expected "
                              f"{sorted(set(INPUTS) | set(OUTPUTS))}; re-export with gtasr-export")
        batch = sidecar["batch"]
        self.info = EngineInfo(backend=self.facts.name, facts=self.facts, device=device, precision=precision,
                               size_multiple=int(sidecar["size_multiple"]),
                               tile_lr=None if sidecar["tile_lr"] is None else tuple(sidecar["tile_lr"]),
                               batch_range=(batch["min"], batch["opt"], batch["max"]),
                               norm_groups=int(sidecar["norm_groups"]), scale=int(sidecar["scale"]))
        self.path = onnx_path

    def _request_for(self, lq: np.ndarray):
        """The infer request for this input shape: one compiled for the shape (static graphs, large calls)."""
        if () in self._requests:
            return self._requests[()]
        n, _, h, w = lq.shape
        key = (n, h, w)
        request = self._requests.pop(key, None)
        if request is None:
            model = self._model.clone()
            scale = self.info.scale
            model.reshape({"x_t": [n, 3, h * scale, w * scale], "lq": [n, 3, h, w], "sigma": [n]})
            config = {k: v for k, v in self._config.items() if k != "CACHE_DIR"}
            request = self._core.compile_model(model, self._device, config).create_infer_request()
            while len(self._requests) >= SHAPES_KEPT:
                self._requests.pop(next(iter(self._requests)))
        self._requests[key] = request  # most recent last
        return request

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        n, _, h, w = lq.shape
        if () not in self._requests and not static_pays(n * h * w, self.weights):  # a small call
            if self._small is not None:
                return self._small._run(x_t, lq, sigma, norm_stats, want_stats)
            if self._dynamic is None:  # through the disk cache: compiled once per graph and settings
                self._dynamic = self._core.compile_model(self._model, self._device, self._config).create_infer_request()
            request = self._dynamic
        else:
            request = self._request_for(lq)
        result = request.infer(graph_feeds(x_t, lq, sigma, norm_stats, self.info.norm_groups))
        outputs = {key.get_any_name(): value for key, value in result.items()}
        if want_stats:
            return None, np.array(outputs["tile_stats"], dtype=np.float32)
        return np.array(outputs["sr"], dtype=np.float32), None

    def close(self) -> None:
        self._requests.clear()
        self._dynamic = None
        self._model = None
