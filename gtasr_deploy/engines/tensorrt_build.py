"""Build strongly-typed TensorRT engines from exported ONNX graphs, with an on-disk engine cache.

The only builder module that touches ``tensorrt``, always imported lazily inside functions so the
package imports (and its tests run) without it. Written against the TensorRT 10/11 Python API:
``Builder.create_network(1 << STRONGLY_TYPED)``, ``OnnxParser.parse_from_file``,
``IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``, one optimisation profile,
``create_timing_cache``/``set_timing_cache``, ``build_serialized_network``.

FP16 (SPEC §4): the fp16 ONNX graph already carries its fp16 tensors and fp32 islands, and the
network is strongly typed, so TensorRT keeps exactly those types. The FP16 builder flag is
deprecated in 10.12 and removed in 11 and must never be set: under strong typing it is an error,
and without strong typing it would let TensorRT move the fp32 islands (GroupNorm, softmax) to fp16.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from .. import contract
from . import trt_cache

PIP_HINT = "pip install 'gtasr-deploy[tensorrt]'"
MIN_TENSORRT = (10, 0)  # execute_async_v3 / num_io_tensors / strong typing; the extra pins >= 10.12
DEFAULT_WORKSPACE_GB = 8.0
MAX_LISTED_PARSER_ERRORS = 10


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def import_tensorrt():
    """Return the ``tensorrt`` module or raise BackendUnavailableError saying how to get it."""
    try:
        import tensorrt as trt
    except Exception as err:  # ImportError, or OSError when the wheel's libnvinfer cannot load
        raise BackendUnavailableError(
            f"tensorrt backend: cannot import the 'tensorrt' module ({type(err).__name__}: {err}); "
            f"install it with {PIP_HINT} (TensorRT needs an NVIDIA GPU and driver)"
        ) from err
    version = str(getattr(trt, "__version__", "0"))
    if _version_tuple(version) < MIN_TENSORRT:
        raise BackendUnavailableError(
            f"tensorrt backend: TensorRT {version} is too old, expected >= "
            f"{'.'.join(map(str, MIN_TENSORRT))}; upgrade with {PIP_HINT}"
        )
    return trt


def cuda_device_info() -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of the current CUDA device, or BackendUnavailableError."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "tensorrt backend: no CUDA GPU is visible (torch.cuda.is_available() is False); "
            "TensorRT needs an NVIDIA GPU, its driver and a CUDA build of torch — use the "
            "onnxruntime or torch backend on this machine"
        )
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), (int(major), int(minor))


def explain_unavailable() -> str | None:
    """One line saying why no TensorRT engine can be built here, or None when one can."""
    try:
        import_tensorrt()
        cuda_device_info()
    except BackendUnavailableError as err:
        return str(err)
    return None


def current_spec(onnx_sidecar: dict) -> trt_cache.EngineSpec:
    """The engine spec for this graph on this machine (TensorRT version, GPU, compute capability)."""
    trt = import_tensorrt()
    gpu_name, capability = cuda_device_info()
    return trt_cache.EngineSpec.from_onnx_sidecar(
        onnx_sidecar, trt_version=str(trt.__version__), gpu_name=gpu_name, compute_capability=capability)


def _error_field(error, method: str, default):
    """Parser-error accessors vary by version (node_name/node_operator since 10.x): read what exists."""
    fn = getattr(error, method, None)
    if fn is None:
        return default
    try:
        value = fn()
    except Exception:  # a binding that exists but cannot answer for this error
        return default
    return default if value is None else value


def format_parser_errors(parser, onnx_path: str | Path) -> str:
    """One line listing the parser's errors with node index, name and operator."""
    count = int(parser.num_errors)
    items = []
    for i in range(min(count, MAX_LISTED_PARSER_ERRORS)):
        error = parser.get_error(i)
        node = int(_error_field(error, "node", -1))
        where = f"node #{node}" if node >= 0 else "graph"
        name = _error_field(error, "node_name", "")
        operator = _error_field(error, "node_operator", "")
        if name:
            where += f" '{name}'"
        if operator:
            where += f" ({operator})"
        items.append(f"[{i}] {where}: {_error_field(error, 'desc', '?')}")
    if count > MAX_LISTED_PARSER_ERRORS:
        items.append(f"... and {count - MAX_LISTED_PARSER_ERRORS} more")
    listed = "; ".join(items) if items else "no error details reported"
    return (f"TensorRT could not parse {onnx_path}: {count} error(s): {listed}. "
            "Check the graph with onnx.checker and re-export it with gtasr-export")


def _network_flags(trt) -> int:
    """Strongly typed network: the flag exists in 10.x; 11 ignores it (always strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _check_network_inputs(network, onnx_path: Path) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(contract.INPUTS):
        raise EngineBuildError(f"TensorRT network from {onnx_path}: inputs are {names}, expected "
                               f"{list(contract.INPUTS)} (re-export the graph with gtasr-export)")


def _attach_timing_cache(config, path: Path | None, log: Callable[[str], None]):
    """Load the timing cache file if present; fall back to an empty cache when it does not fit."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"timing cache {path} does not match this TensorRT/GPU; starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write_bytes(path, bytes(cache.serialize()))


def build_serialized_engine(onnx_path: str | Path, onnx_sidecar: dict, *,
                            workspace_gb: float = DEFAULT_WORKSPACE_GB,
                            timing_cache_path: str | Path | None = None,
                            log: Callable[[str], None] = print) -> bytes:
    """Parse ``onnx_path`` into a strongly-typed network and build it; return the engine bytes.

    One optimisation profile: every input's batch axis ranges over the sidecar's (min, opt, max),
    the spatial dims stay at the static tile shape. Raises EngineBuildError on parser or build failure.
    """
    onnx_path = Path(onnx_path)
    if not workspace_gb > 0:
        raise ConfigError(f"TensorRT build: workspace_gb is {workspace_gb!r}, expected a positive number of GiB")
    timing_path = None if timing_cache_path is None else Path(timing_cache_path)
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(format_parser_errors(parser, onnx_path))
    _check_network_inputs(network, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (shape_min, shape_opt, shape_max) in contract.profile_shapes(onnx_sidecar).items():
        profile.set_shape(name, shape_min, shape_opt, shape_max)
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, timing_path, log)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT build of {onnx_path} failed (build_serialized_network returned None); see the "
            f"TensorRT log above. Common causes: workspace {workspace_gb:g} GiB too small (raise "
            "workspace_gb), not enough GPU memory for batch max, or an unsupported layer")
    _save_timing_cache(config, timing_path)
    return bytes(serialized)


def get_or_build_engine(onnx_path: str | Path, *, cache_dir: str | Path = "engines",
                        workspace_gb: float = DEFAULT_WORKSPACE_GB,
                        timing_cache: str | Path | None = None, rebuild: bool = False,
                        log: Callable[[str], None] = print) -> Path:
    """Path of an engine for ``onnx_path`` on this GPU: a matching cached one, else a fresh build.

    ``timing_cache`` None puts the timing cache in ``cache_dir`` (one file per TensorRT version and
    GPU). The engine's sidecar JSON is written next to it; a sidecar that names another GPU,
    TensorRT version or ONNX hash makes the engine stale, so it is rebuilt, never loaded.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"TensorRT build: ONNX graph {onnx_path} not found; export it first with gtasr-export")
    sidecar = contract.read_onnx_sidecar(onnx_path)
    actual_sha = trt_cache.file_sha256(onnx_path)
    if actual_sha != sidecar["onnx_sha256"]:
        raise ConfigError(f"TensorRT build: {onnx_path} has sha256 {actual_sha[:16]}…, its sidecar records "
                          f"{sidecar['onnx_sha256'][:16]}…; the graph changed after export — re-export it")
    spec = current_spec(sidecar)
    cache_dir = Path(cache_dir)
    engine_path = cache_dir / trt_cache.engine_file_name(spec)
    decision = trt_cache.cache_decision(engine_path, spec, rebuild=rebuild)
    if decision.action == "load":
        log(f"TensorRT engine: reusing {engine_path}")
        return engine_path
    log(f"TensorRT engine: building {engine_path} ({decision.reason}); this takes minutes")
    timing_path = Path(timing_cache) if timing_cache is not None else cache_dir / trt_cache.timing_cache_file_name(
        trt_version=spec.trt_version, gpu_name=spec.gpu_name, compute_capability=spec.compute_capability)
    data = build_serialized_engine(onnx_path, sidecar, workspace_gb=workspace_gb,
                                   timing_cache_path=timing_path, log=log)
    atomic_write_bytes(engine_path, data)
    trt_cache.write_engine_sidecar(engine_path, spec, size_multiple=sidecar["size_multiple"],
                                   norm_groups=sidecar["norm_groups"],
                                   extra={"onnx_path": str(onnx_path), "workspace_gb": workspace_gb,
                                          "opset": sidecar["opset"]})
    log(f"TensorRT engine: wrote {engine_path} ({len(data) / 2**20:.1f} MiB)")
    return engine_path
