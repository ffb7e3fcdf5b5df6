"""TensorRT runtime engine: a checked, strongly-typed engine driven with torch CUDA buffers.

Loading picks the library that built the engine (its sidecar says ``tensorrt-rtx`` or ``tensorrt``)
and refuses, in one line naming the hardware needed, an engine whose targets do not include this
GPU's compute capability — before deserializing. The engine bytes must match the sha256 its sidecar
recorded, and the library's own validity check (``Runtime.get_engine_validity``, where it exists)
must pass.

Device buffers are torch CUDA tensors, one flat buffer per tensor sized for the profile's largest
shape; every call sets each input's shape (``set_input_shape``), so any shape inside the profile
runs, and inference runs with ``execute_async_v3`` on the current torch stream (no pycuda).
TensorRT for RTX gets a runtime config: its JIT kernel cache kept on disk beside the engine, and,
with ``cuda_graph``, its own whole-graph CUDA graph capture. With classic TensorRT, ``cuda_graph``
captures ``execute_async_v3`` once per input shape with torch and replays it.

I/O is fp32 on both sides (the fp16 graph keeps fp32 inputs/outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from pathlib import Path
from typing import TypeVar

from ..atomic import atomic_write_bytes
from ..contract import INPUTS, OUTPUTS, PRECISIONS, graph_feeds
from ..errors import ConfigError, EngineBuildError, InputError
from . import tensorrt_build, trt_cache
from .base import BackendFacts, Engine, EngineInfo

T = TypeVar("T")


class EngineDeserializeError(EngineBuildError):
    """An engine file could not be deserialized (corrupt, or of another library/driver)."""


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


def engine_validity_problem(trt, runtime, data: bytes) -> str | None:
    """The library's own check of a serialized engine (TensorRT for RTX, recent TensorRT), or None."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return None
    validity, diagnostics = check(data)
    if validity != trt.EngineValidity.INVALID:
        return None
    names = [name for name, flag in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(flag)]
    return f"the library reports it INVALID ({', '.join(names) or 'no diagnostics'})"


def find_engine(onnx_path: Path, engine_dir: Path, sidecar: dict, capability: Sequence[int], gpu_name: str,
                libraries: Sequence[str]) -> Path | None:
    """An engine beside the graph that was built from it (same sha256 and profile) by an installed
    library and that holds code for this GPU; None when there is none."""
    profile = trt_cache.canonical_profile(trt_cache.graph_profile(sidecar))
    for path in sorted(engine_dir.glob(f"{onnx_path.stem}_*.engine")):
        try:
            side = trt_cache.read_engine_sidecar(path)
        except ConfigError:
            continue
        if (side["onnx_sha256"] == sidecar["onnx_sha256"] and side["library"] in libraries
                and trt_cache.canonical_profile(side["profile"]) == profile
                and trt_cache.runs_on(side, capability, gpu_name) is None):
            return path
    return None


class TensorRTEngine(Engine):
    """Run a serialized TensorRT engine on host float32 arrays (see :mod:`gtasr_deploy.engines.base`)."""

    # runs the graph's own precision on an NVIDIA GPU; built by TensorRT or TensorRT for RTX
    facts = BackendFacts(name="tensorrt", precisions=PRECISIONS, devices=("cuda",), extra="tensorrt",
                         modules=("tensorrt",), graph=True, graph_precisions=PRECISIONS, precision_from_graph=True)

    def __init__(self, engine_path: str | Path, *, cuda_graph: bool = False, runtime_cache: bool = True,
                 log: Callable[[str], None] = print):
        engine_path = Path(engine_path)
        self._closed = True
        sidecar = trt_cache.read_engine_sidecar(engine_path)
        library = sidecar["library"]
        trt = tensorrt_build.import_library(library)
        gpu_name, capability = tensorrt_build.cuda_device_info()
        where = f"TensorRT engine {engine_path}"
        problem = trt_cache.runs_on(sidecar, capability, gpu_name)
        if problem:
            raise EngineBuildError(f"{where} cannot run here: {problem}")
        if sidecar["library_version"] != str(trt.__version__):
            raise EngineBuildError(f"{where} was built with {library} {sidecar['library_version']} and "
                                   f"{trt.__version__} is installed; rebuild it (gtasr-export)")
        data = engine_path.read_bytes()
        problem = trt_cache.check_engine_bytes(engine_path, data, sidecar)
        if problem:
            raise EngineDeserializeError(f"{where}: {problem}")
        import torch

        self._torch, self._trt, self._log = torch, trt, log
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        problem = engine_validity_problem(trt, self._runtime, data)
        if problem:
            raise EngineDeserializeError(f"{where}: {problem}")
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineDeserializeError(f"TensorRT could not deserialize {engine_path} (got None)")
        check_engine_io(trt, engine, where)
        self._engine = engine
        self._cache_path = engine_path.with_suffix(".runtime-cache") if runtime_cache else None
        self._runtime_cache = None
        self._use_graph = bool(cuda_graph)
        self._context = self._create_context(engine)
        if self._context is None:
            raise EngineBuildError(f"{where}: create_execution_context returned None (out of GPU memory?)")
        self._profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in sidecar["profile"].items()}
        self._device = torch.device("cuda", torch.cuda.current_device())
        tile = sidecar["tile_lr"]
        self.info = EngineInfo(backend=self.facts.name, facts=self.facts, device=str(self._device),
                               precision=sidecar["precision"],
                               size_multiple=int(sidecar["size_multiple"]),
                               tile_lr=None if tile is None else tuple(int(v) for v in tile),
                               batch_range=tuple(int(v) for v in sidecar["batch_range"]),
                               norm_groups=int(sidecar["norm_groups"]),
                               lr_max=tuple(int(v) for v in self._profile["lq"][2][2:4]))
        self._allocate()
        self._bound: dict[str, tuple[int, ...]] = {}
        self._graph = None
        self._graph_shapes = None
        self._closed = False

    @classmethod
    def from_onnx(cls, onnx_path: str | Path, *, engine_dir: str | Path | None = None, library: str = "auto",
                  targets: str = "auto", workspace_gb: float = tensorrt_build.DEFAULT_WORKSPACE_GB,
                  timing_cache: str | Path | None = None, rebuild: bool = False,
                  cuda_graph: bool = False, log: Callable[[str], None] = print) -> TensorRTEngine:
        """An engine for ``onnx_path`` on this GPU: one already beside the graph (built anywhere, e.g. by
        gtasr-export with TensorRT for RTX) whose targets include this GPU, else one built here now."""
        onnx_path = Path(onnx_path)
        gpu_name, capability = tensorrt_build.cuda_device_info()
        engine_dir = onnx_path.parent if engine_dir is None else Path(engine_dir)
        if not rebuild and targets == "auto":
            wanted = list(tensorrt_build.LIBRARIES) if library == "auto" else [library]
            found = find_engine(onnx_path, engine_dir, tensorrt_build.graph_spec(onnx_path), capability, gpu_name,
                                [name for name in wanted if tensorrt_build.importable(name)])
            if found is not None:
                log(f"TensorRT engine: using {found}")
                try:
                    return cls(found, cuda_graph=cuda_graph, log=log)
                except EngineDeserializeError as err:
                    log(f"TensorRT engine: {err}; building one for this GPU")

        def build(force: bool) -> Path:
            return tensorrt_build.get_or_build_engine(onnx_path, engine_dir=engine_dir, library=library,
                                                      targets=targets, workspace_gb=workspace_gb,
                                                      timing_cache=timing_cache, rebuild=force, log=log)

        return load_with_one_rebuild(build, lambda p: cls(p, cuda_graph=cuda_graph, log=log), log,
                                     rebuild=rebuild)

    def _create_context(self, engine):
        """A runtime config where the library has one (TensorRT for RTX): the on-disk JIT kernel cache and
        the library's own CUDA graph strategy, each used only where the binding offers it."""
        trt = self._trt
        if not hasattr(engine, "create_runtime_config"):
            return engine.create_execution_context()
        config = engine.create_runtime_config()
        if self._cache_path is not None and hasattr(config, "create_runtime_cache"):
            cache = config.create_runtime_cache()
            if self._cache_path.is_file() and not cache.deserialize(self._cache_path.read_bytes()):
                self._log(f"TensorRT runtime cache {self._cache_path} is from another GPU/driver; starting afresh")
            config.set_runtime_cache(cache)
            self._runtime_cache = cache
        if self._use_graph and hasattr(trt, "CudaGraphStrategy") and hasattr(config, "cuda_graph_strategy"):
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self._use_graph = False  # the library captures and replays; no torch capture on top
        return engine.create_execution_context(config)

    def _allocate(self) -> None:
        """One flat device and pinned host buffer per tensor, sized for the profile's largest shape."""
        torch = self._torch
        largest = {name: prod(shapes[2]) for name, shapes in self._profile.items()}
        largest["sr"] = largest["x_t"]
        largest["tile_stats"] = self.info.max_batch * 2 * self.info.norm_groups
        self._dev = {n: torch.empty(k, dtype=torch.float32, device=self._device) for n, k in largest.items()}
        self._host = {n: torch.empty(k, dtype=torch.float32, pin_memory=True) for n, k in largest.items()}
        for name, tensor in self._dev.items():
            # Views of a buffer start at its address, so the binding never changes between calls.
            if not self._context.set_tensor_address(name, tensor.data_ptr()):
                raise EngineBuildError(f"TensorRT engine: set_tensor_address('{name}') failed")

    def _check_profile(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for name, shape in shapes.items():
            lo, _, hi = self._profile[name]
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                raise InputError(f"TensorRT engine: input '{name}' has shape {shape}, outside the engine's "
                                 f"profile {tuple(lo)}..{tuple(hi)}; export and build for that size")

    def _bind(self, shapes: dict[str, tuple[int, ...]]) -> None:
        if shapes == self._bound:
            return
        for name, shape in shapes.items():
            if not self._context.set_input_shape(name, shape):
                raise InputError(f"TensorRT engine: set_input_shape('{name}', {shape}) rejected; the engine's "
                                 f"profile is {self._profile[name]}")
        self._bound = shapes

    def _execute(self) -> None:
        stream = self._torch.cuda.current_stream(self._device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("TensorRT engine: execute_async_v3 returned False; see the TensorRT log")

    def _capture(self) -> None:
        """Classic TensorRT: warm up once (flushes deferred shape work), then capture execute_async_v3."""
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
        self._graph, self._graph_shapes = graph, dict(self._bound)

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        torch = self._torch
        if self._closed:
            raise ConfigError("TensorRT engine: called after close()")
        feeds = graph_feeds(x_t, lq, sigma, norm_stats, self.info.norm_groups)
        shapes = {name: tuple(int(d) for d in array.shape) for name, array in feeds.items()}
        self._check_profile(shapes)
        for name, array in feeds.items():
            k = array.size
            self._host[name][:k].copy_(torch.from_numpy(array).reshape(-1))
            self._dev[name][:k].copy_(self._host[name][:k], non_blocking=True)
        self._bind(shapes)
        if self._use_graph and self._graph_shapes != self._bound:
            self._capture()
        if self._use_graph and self._graph is not None:
            self._graph.replay()
        else:
            self._execute()
        name = "tile_stats" if want_stats else "sr"
        shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
        k = prod(shape)
        out = self._host[name][:k]
        out.copy_(self._dev[name][:k], non_blocking=True)
        torch.cuda.current_stream(self._device).synchronize()
        result = out.numpy().reshape(shape).copy()
        return (None, result) if want_stats else (result, None)

    def close(self) -> None:
        """Save the runtime kernel cache; free the graph, context, engine and buffers. Safe to call twice."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._runtime_cache is not None and self._cache_path is not None:
            try:
                atomic_write_bytes(self._cache_path, bytes(self._runtime_cache.serialize()))
            except OSError as err:  # a read-only engine folder costs JIT time next run, nothing else
                self._log(f"TensorRT runtime cache not saved to {self._cache_path}: {err}")
        self._graph = None
        self._context = None
        self._engine = None
        self._runtime_cache = None
        self._dev = {}
        self._host = {}
