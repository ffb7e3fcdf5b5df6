"""TensorRT runtime engine: a cached, strongly-typed engine driven with torch CUDA buffers.

Device buffers are torch CUDA tensors allocated once for the engine's max batch; their addresses
go to ``IExecutionContext.set_tensor_address`` and inference runs with ``execute_async_v3`` on the
current torch stream, so no pycuda is needed (SPEC §4). Host transfers go through pinned buffers.
Optionally the ``execute_async_v3`` call is captured once per batch size in a CUDA graph and
replayed, which removes per-layer launch overhead for the fixed tile shape.

I/O is fp32 on both sides (the fp16 graph keeps fp32 inputs/outputs); the engine's precision
comes from its sidecar.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar


from ..contract import INPUTS, OUTPUTS, graph_feeds, io_shapes
from ..errors import ConfigError, EngineBuildError
from . import tensorrt_build, trt_cache
from .base import Engine, EngineInfo

BATCHED = ("x_t", "lq", "sigma", "sr", "tile_stats")  # tensors whose leading axis is the batch

T = TypeVar("T")


class EngineDeserializeError(EngineBuildError):
    """``deserialize_cuda_engine`` returned None for an engine file (corrupt or incompatible)."""


def load_with_one_rebuild(build: Callable[[bool], Path], load: Callable[[Path], T],
                          log: Callable[[str], None] = print, *, rebuild: bool = False) -> T:
    """``load(build(rebuild))``; if that engine cannot be deserialized, rebuild once and retry.

    A second failure is an EngineBuildError: a freshly built engine that does not deserialize
    points at the TensorRT installation, not at the cache.
    """
    path = build(rebuild)
    try:
        return load(path)
    except EngineDeserializeError as err:
        if rebuild:
            raise EngineBuildError(f"{err}; it was just built, so check the TensorRT installation") from err
        log(f"TensorRT engine: {err}; rebuilding once")
    path = build(True)
    try:
        return load(path)
    except EngineDeserializeError as err:
        raise EngineBuildError(f"{err} even after a rebuild; check the TensorRT installation and driver") from err


def check_engine_io(trt, engine, where: str) -> None:
    """Engine tensors must be exactly the contract's inputs and outputs, all fp32; errors name the tensor."""
    found = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        found[name] = (engine.get_tensor_mode(name), engine.get_tensor_dtype(name))
    expected = {**{n: trt.TensorIOMode.INPUT for n in INPUTS}, **{n: trt.TensorIOMode.OUTPUT for n in OUTPUTS}}
    if set(found) != set(expected):
        raise EngineBuildError(f"{where}: engine tensors are {sorted(found)}, expected {sorted(expected)}; "
                               "rebuild it from a graph exported by gtasr-export")
    for name, mode in expected.items():
        got_mode, got_dtype = found[name]
        if got_mode != mode:
            raise EngineBuildError(f"{where}: tensor '{name}' is {got_mode}, expected {mode}")
        if got_dtype != trt.DataType.FLOAT:
            raise EngineBuildError(f"{where}: tensor '{name}' has dtype {got_dtype}, expected "
                                   f"{trt.DataType.FLOAT} (fp32 I/O); re-export the graph")


class TensorRTEngine(Engine):
    """Run a serialized TensorRT engine on host float32 arrays (see :mod:`gtasr_deploy.engines.base`)."""

    def __init__(self, engine_path: str | Path, *, cuda_graph: bool = False,
                 log: Callable[[str], None] = print):
        trt = tensorrt_build.import_tensorrt()
        gpu_name, capability = tensorrt_build.cuda_device_info()
        import torch

        self._torch = torch
        self._log = log
        self._closed = False
        engine_path = Path(engine_path)
        sidecar = trt_cache.read_engine_sidecar(engine_path)
        here = trt_cache.EngineSpec.for_engine_here(sidecar, trt_version=str(trt.__version__),
                                                     gpu_name=gpu_name, compute_capability=capability)
        mismatch = trt_cache.sidecar_mismatch(sidecar, here)
        if mismatch:
            raise EngineBuildError(f"TensorRT engine {engine_path} cannot run here: {mismatch}; rebuild it "
                                   "(gtasr-export --tensorrt, or TensorRTEngine.from_onnx)")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise EngineDeserializeError(f"TensorRT could not deserialize {engine_path} (got None)")
        check_engine_io(trt, engine, f"TensorRT engine {engine_path}")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineBuildError(f"TensorRT engine {engine_path}: create_execution_context returned None "
                                   "(out of GPU memory?)")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self.info = EngineInfo(backend="tensorrt", device=str(self._device), precision=here.precision,
                               size_multiple=int(sidecar["size_multiple"]), tile_lr=here.tile_lr,
                               batch_range=here.batch_range, norm_groups=int(sidecar["norm_groups"]))
        self._allocate()
        self._bound_batch = None  # batch whose input shapes the context currently holds
        self._use_graph = bool(cuda_graph)
        self._graph = None
        self._graph_batch = None

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, *, cache_dir: str | Path = "engines",
                  workspace_gb: float = tensorrt_build.DEFAULT_WORKSPACE_GB,
                  timing_cache: str | Path | None = None, rebuild: bool = False,
                  cuda_graph: bool = False, log: Callable[[str], None] = print) -> TensorRTEngine:
        """Load the cached engine for ``onnx_path`` (building it when missing or stale)."""

        def build(force: bool) -> Path:
            return tensorrt_build.get_or_build_engine(onnx_path, cache_dir=cache_dir, workspace_gb=workspace_gb,
                                                      timing_cache=timing_cache, rebuild=force, log=log)

        return load_with_one_rebuild(build, lambda p: cls(p, cuda_graph=cuda_graph, log=log), log,
                                     rebuild=rebuild)

    def _allocate(self) -> None:
        """Device and pinned host buffers at max batch; smaller batches use the leading slice."""
        torch = self._torch
        shapes = io_shapes(self.info.tile_lr, self.info.max_batch, self.info.norm_groups, self.info.scale)
        self._dev = {n: torch.empty(s, dtype=torch.float32, device=self._device) for n, s in shapes.items()}
        self._host = {n: torch.empty(s, dtype=torch.float32, pin_memory=True) for n, s in shapes.items()}
        for name, tensor in self._dev.items():
            # A leading-axis slice starts at the same address, so the binding never changes.
            if not self._context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineBuildError(f"TensorRT engine: set_tensor_address('{name}') failed")

    def _bind_batch(self, n: int) -> None:
        if n == self._bound_batch:
            return
        for name, shape in io_shapes(self.info.tile_lr, n, self.info.norm_groups, self.info.scale).items():
            if name in INPUTS and not self._context.set_input_shape(name, shape):
                raise ConfigError(f"TensorRT engine: set_input_shape('{name}', {shape}) rejected; "
                                  f"the engine's batch range is {self.info.batch_range}")
        self._bound_batch = n

    def _execute(self) -> None:
        stream = self._torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("TensorRT engine: execute_async_v3 returned False; see the TensorRT log")

    def _capture(self, n: int) -> None:
        """Warm up once (flushes TensorRT's deferred shape work), then capture execute_async_v3."""
        torch = self._torch
        self._graph = None
        self._execute()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._execute()  # current_stream() is the capture stream inside this block
        except RuntimeError as err:
            self._log(f"TensorRT engine: CUDA graph capture failed ({err}); running without graphs")
            self._use_graph = False
            return
        self._graph, self._graph_batch = graph, n

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        torch = self._torch
        if self._closed:
            raise ConfigError("TensorRT engine: called after close()")
        n = lq.shape[0]
        for name, array in graph_feeds(x_t, lq, sigma, norm_stats, self.info.norm_groups).items():
            rows = slice(0, n) if name in BATCHED else slice(None)
            self._host[name][rows].copy_(torch.from_numpy(array))
            self._dev[name][rows].copy_(self._host[name][rows], non_blocking=True)
        self._bind_batch(n)
        if self._use_graph and self._graph_batch != n:
            self._capture(n)
        if self._use_graph and self._graph is not None:
            self._graph.replay()
        else:
            self._execute()
        name = "tile_stats" if want_stats else "sr"
        out = self._host[name][:n]
        out.copy_(self._dev[name][:n], non_blocking=True)
        torch.cuda.current_stream(self._device).synchronize()
        result = out.numpy().copy()
        return (None, result) if want_stats else (result, None)

    def close(self) -> None:
        """Free the graph, context, engine and buffers (in that order). Safe to call twice."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self._graph = None
        self._context = None
        self._engine = None
        self._dev = {}
        self._host = {}
