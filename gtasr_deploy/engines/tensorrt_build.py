"""Build strongly-typed TensorRT engines from exported ONNX graphs, with TensorRT for RTX or classic TensorRT.

Two libraries share one API family, and this is the one builder for both:

* ``tensorrt_rtx`` (pip ``tensorrt-rtx-cu12``, extra ``tensorrt-rtx``) compiles ahead of time, on any
  machine, GPU or not, for a list of GPU architectures (``IBuilderConfig.num_compute_capabilities`` and
  ``set_compute_capability``); ``ComputeCapability.CURRENT`` when it should target the GPU present.
  Always strongly typed; it has no timing cache (those calls are deprecated no-ops there).
* ``tensorrt`` (classic, installed from NVIDIA on the GPU machine) builds for the GPU it runs on, and
  reuses a timing cache file between builds.

Imported lazily, so the package imports and its tests run without either. Written against the
documented Python API: ``Builder.create_network``, ``OnnxParser.parse_from_file``,
``IBuilderConfig.set_memory_pool_limit``, one optimisation profile from
:func:`gtasr_deploy.contract.profile_shapes`, ``build_serialized_network``.

FP16: the fp16 ONNX graph already carries its fp16 tensors and fp32 islands (GroupNorm, softmax,
sigma embedding), and the network is strongly typed, so TensorRT keeps exactly those types; no
precision flag is ever set. The builder asks for ``ProfilingVerbosity.DETAILED`` and reads the
per-kernel report TensorRT logs at the end of a build (``Name: … LayerType: … Datatype: …``), and
records a summary in the engine's sidecar: what ran in fp16 is visible without a GPU.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import contract
from ..atomic import atomic_write_bytes
from ..errors import BackendUnavailableError, ConfigError, EngineBuildError
from . import trt_cache


@dataclass(frozen=True)
class Library:
    """One TensorRT flavour: import name, pip extra, oldest version with the API used here."""

    name: str  # "tensorrt-rtx" | "tensorrt" (the sidecar's "library")
    module: str
    extra: str
    min_version: tuple[int, ...]
    ahead_of_time: bool  # compiles for listed architectures without a GPU

    @property
    def pip_hint(self) -> str:
        return f"pip install 'gtasr-deploy[{self.extra}]'"


LIBRARIES = {
    "tensorrt-rtx": Library("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx", (1, 0), True),
    "tensorrt": Library("tensorrt", "tensorrt", "tensorrt", (10, 0), False),
}
LIBRARY_CHOICES = ("auto", *LIBRARIES)
# No GPU here: an engine for Ampere, Ada and Blackwell RTX cards (RTX 30, 40 incl. the 4090, 50 series).
DEFAULT_AOT_TARGETS = ("sm86", "sm89", "sm120")
# Why sm75 is refused for TensorRT for RTX (checked by building both graphs for SM75).
TURING_REFUSAL = ("sm75 (Turing: RTX 20 series) is not a TensorRT-for-RTX target for this model: its sigma-embedding "
                  "MLP is an fp32 island and TensorRT for RTX has no fp32 matrix multiply on Turing ('FP32 GEMM "
                  "is not supported'); on Turing use --backend torch or onnxruntime on the GPU")
DEFAULT_WORKSPACE_GB = 8.0
MAX_LISTED_PARSER_ERRORS = 10


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def import_library(name: str):
    """The module of TensorRT library ``name``, or BackendUnavailableError saying how to get it."""
    if name not in LIBRARIES:
        raise ConfigError(f"TensorRT library {name!r} unknown; valid: {', '.join(LIBRARY_CHOICES)}")
    lib = LIBRARIES[name]
    try:
        trt = importlib.import_module(lib.module)
    except Exception as err:  # ImportError, or OSError when the wheel's libraries cannot load
        raise BackendUnavailableError(
            f"tensorrt backend: cannot import the '{lib.module}' module ({type(err).__name__}: {err}); "
            f"install it with {lib.pip_hint}") from err
    version = str(getattr(trt, "__version__", "0"))
    if _version_tuple(version) < lib.min_version:
        raise BackendUnavailableError(
            f"tensorrt backend: {lib.module} {version} is too old, expected >= "
            f"{'.'.join(map(str, lib.min_version))}; upgrade with {lib.pip_hint}")
    return trt


def importable(name: str) -> bool:
    """Whether TensorRT library ``name`` imports here (at a version this package supports)."""
    try:
        import_library(name)
    except BackendUnavailableError:
        return False
    return True


def local_gpu() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of the current CUDA device, or None: no torch CUDA, no GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return torch.cuda.get_device_name(index), (int(major), int(minor))
    except Exception:  # a CPU build of torch or a broken driver: no GPU for our purposes
        return None


def cuda_device_info() -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of the current CUDA device, or BackendUnavailableError."""
    gpu = local_gpu()
    if gpu is None:
        raise BackendUnavailableError(
            "tensorrt backend: no CUDA GPU is visible (torch.cuda.is_available() is False); running a TensorRT "
            "engine needs an NVIDIA GPU, its driver and a CUDA build of torch — use the onnxruntime, openvino or "
            "torch backend on this machine (engines can still be built here with TensorRT for RTX)")
    return gpu


def _rtx_targets(trt) -> dict[str, object]:
    """{"sm89": ComputeCapability.SM89, ...}: the architectures this TensorRT for RTX can compile for."""
    members = getattr(trt.ComputeCapability, "__members__", {})
    return {name.lower(): value for name, value in members.items() if re.fullmatch(r"SM\d+", name)}


def pick_library(requested: str = "auto", gpu: tuple[str, tuple[int, int]] | None = None) -> str:
    """The library to build with: ``requested``, or for "auto" TensorRT for RTX when it is installed
    and can target this GPU (or there is none), else classic TensorRT."""
    if requested != "auto":
        import_library(requested)
        return requested
    if importable("tensorrt-rtx"):
        rtx = import_library("tensorrt-rtx")
        if gpu is None or trt_cache.target_name(gpu[1]) in _rtx_targets(rtx) or not importable("tensorrt"):
            return "tensorrt-rtx"
    if importable("tensorrt"):
        return "tensorrt"
    raise BackendUnavailableError(
        "tensorrt backend: neither TensorRT for RTX nor TensorRT is installed; install one with "
        f"{LIBRARIES['tensorrt-rtx'].pip_hint} (builds anywhere, runs on RTX GPUs) or, on a data-centre GPU, "
        "classic TensorRT from NVIDIA")


@dataclass(frozen=True, kw_only=True)
class Targets:
    """What to compile for: target names for the key, whether to ask for CURRENT, the GPU used."""

    names: tuple[str, ...]
    current: bool = False
    build_gpu: str = ""


def resolve_targets(library: str, requested: str | Sequence[str] = "auto",
                    gpu: tuple[str, tuple[int, int]] | None = None) -> Targets:
    """Turn ``--trt-targets`` into :class:`Targets`, refusing in one line what cannot be built."""
    wanted = parse_request(requested, library)
    if library == "tensorrt":
        if gpu is None:
            raise BackendUnavailableError(
                "classic TensorRT builds only on the GPU the engine is for, and no CUDA GPU is visible; build on "
                f"that machine, or use TensorRT for RTX ({LIBRARIES['tensorrt-rtx'].pip_hint}) for RTX GPUs")
        here = trt_cache.target_name(gpu[1])
        if set(wanted) - {"auto", "current", here}:
            raise ConfigError(f"TensorRT targets {','.join(wanted)}: classic TensorRT compiles for this GPU only "
                              f"({gpu[0]}, {here}); other targets need TensorRT for RTX (--trt-library tensorrt-rtx)")
        return Targets(names=(here,), build_gpu=gpu[0])
    supported = _rtx_targets(import_library(library))
    if wanted in (("auto",), ("current",)):
        if gpu is not None:
            here = trt_cache.target_name(gpu[1])
            if here == "sm75":
                raise ConfigError(f"TensorRT targets: this GPU ({gpu[0]}) is Turing (sm75), and {TURING_REFUSAL}")
            if here not in supported:
                raise ConfigError(f"TensorRT targets: this GPU ({gpu[0]}) is {here}, which TensorRT for RTX does "
                                  f"not compile for (it supports {', '.join(t for t in supported if t != 'sm75')}); "
                                  "on this GPU use classic TensorRT from NVIDIA, or --backend torch")
            return Targets(names=(here,), current=True, build_gpu=gpu[0])
        if wanted == ("current",):
            raise BackendUnavailableError("TensorRT targets: 'current' needs a CUDA GPU and none is visible; name "
                                          f"the targets instead, e.g. --trt-targets {','.join(DEFAULT_AOT_TARGETS)}")
        wanted = DEFAULT_AOT_TARGETS
    unknown = [t for t in wanted if t not in supported]
    if unknown:
        raise ConfigError(f"TensorRT targets {unknown}: not compiled by this TensorRT for RTX; it supports "
                          f"{', '.join(t for t in supported if t != 'sm75')} (and 'auto')")
    return Targets(names=tuple(wanted))


def parse_request(requested: str | Sequence[str], library: str = "auto") -> tuple[str, ...]:
    """``--trt-targets`` checked before any work: names, 'auto'/'current' alone, and no sm75 for RTX."""
    text = requested if isinstance(requested, str) else ",".join(requested)
    wanted = trt_cache.parse_targets(text)
    if len(wanted) > 1 and set(wanted) & {"auto", "current"}:
        raise ConfigError(f"TensorRT targets {','.join(wanted)}: 'auto'/'current' cannot be combined with names")
    if "sm75" in wanted and library != "tensorrt":
        raise ConfigError(f"TensorRT targets: {TURING_REFUSAL}")
    return wanted


def explain_unavailable() -> str | None:
    """One line saying why no TensorRT engine can RUN here (a library that serves this GPU, and the
    GPU), or None when one can."""
    try:
        gpu = cuda_device_info()
        resolve_targets(pick_library("auto", gpu), "auto", gpu)
    except (BackendUnavailableError, ConfigError) as err:
        return str(err)
    return None


def explain_cannot_build(library: str = "auto", targets: str = "auto") -> str | None:
    """One line saying why no TensorRT engine can be BUILT here, or None: with TensorRT for RTX, any machine."""
    gpu = local_gpu()
    try:
        resolve_targets(pick_library(library, gpu), targets, gpu)
    except (BackendUnavailableError, ConfigError) as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------- errors and the kernel report


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
        items.append(f"[{i}] {where}: {' '.join(str(_error_field(error, 'desc', '?')).split())}")
    if count > MAX_LISTED_PARSER_ERRORS:
        items.append(f"... and {count - MAX_LISTED_PARSER_ERRORS} more")
    return (f"TensorRT could not parse {onnx_path}: {count} error(s): " + "; ".join(items)
            + " — check the graph with onnx.checker and re-export it with gtasr-export")


def onnx_node_ops(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> op type (empty when the onnx package is missing or the file unreadable)."""
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # only used to enrich an error message
        return {}
    return {node.name: node.op_type for node in model.graph.node}


def format_build_error(errors: Sequence[str], onnx_path: Path, targets: Sequence[str]) -> str:
    """One line from the builder's error log: the failing ONNX node and its op when the log names one."""
    first = " ".join(errors[0].split()) if errors else "build_serialized_network returned None (no error logged)"
    first = re.sub(r"\s*In \w+ at \S+$", "", first).rstrip(")") if "Myelin" in first else first
    ops = onnx_node_ops(onnx_path)
    node = next((n for n in re.findall(r"'([^']+)'", first) if n in ops), None)
    where = f" at ONNX node '{node}' ({ops[node]})" if node else ""
    more = f" (+{len(errors) - 1} more error(s) in the TensorRT log)" if len(errors) > 1 else ""
    return f"TensorRT build of {onnx_path} for {','.join(targets)} failed{where}: {first}{more}"


KERNEL_LINE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: .*?Outputs: \[(?P<outs>.*?)\], "
                         r"TacticName: .*?Metadata: (?P<meta>.*)$")


def parse_kernel_report(text: str) -> list[dict]:
    """The builder's per-kernel lines -> [{"name", "type", "out" (datatypes), "onnx" (ONNX node names)}]."""
    kernels = []
    for line in text.splitlines():
        m = KERNEL_LINE.match(line.strip())
        if m is None:
            continue
        kernels.append({"name": m["name"], "type": m["type"],
                        "out": sorted(set(re.findall(r"Datatype: (\w+)", m["outs"]))),
                        "onnx": re.findall(r"\[ONNX Layer: ([^\]]+)\]", m["meta"])})
    return kernels


def summarize_kernels(kernels: Sequence[dict]) -> dict[str, dict[str, int]]:
    """{layer type: {"Half": n, "Float": m, "Float+Half": k}} over the kernels' output datatypes."""
    table: dict[str, Counter] = {}
    for k in kernels:
        table.setdefault(k["type"], Counter())["+".join(k["out"]) or "-"] += 1
    return {t: dict(sorted(c.items())) for t, c in sorted(table.items())}


def _capturing_logger(trt, echo: Callable[[str], None]):
    """An ILogger that keeps errors and the per-kernel report, and passes warnings on to ``echo``."""
    severity = trt.ILogger.Severity

    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.kernel_report = ""

        def log(self, level, message):
            if level in (severity.ERROR, severity.INTERNAL_ERROR):
                self.errors.append(message)
            elif level == severity.WARNING:
                echo(f"TensorRT: {' '.join(message.split())[:300]}")
            elif message.lstrip().startswith("Layers:") and "LayerType:" in message:
                self.kernel_report = message

    return Capture()


# ---------------------------------------------------------------------------- the build


@dataclass
class BuiltEngine:
    data: bytes
    kernels: list[dict] = field(default_factory=list)


def _network_flags(trt) -> int:
    """Strongly typed network: the flag exists in TensorRT 10 and TensorRT for RTX (where it is the only
    mode); TensorRT 11 drops it (always strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _check_network_inputs(network, onnx_path: Path) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(contract.INPUTS):
        raise EngineBuildError(f"TensorRT network from {onnx_path}: inputs are {names}, expected "
                               f"{list(contract.INPUTS)} (re-export the graph with gtasr-export)")


def _set_targets(trt, config, targets: Targets) -> None:
    """TensorRT for RTX: compile for each listed architecture, or CURRENT (the GPU present)."""
    supported = _rtx_targets(trt)
    values = [trt.ComputeCapability.CURRENT] if targets.current else [supported[t] for t in targets.names]
    config.num_compute_capabilities = len(values)
    for index, value in enumerate(values):
        config.set_compute_capability(value, index)


def _attach_timing_cache(config, path: Path | None, log: Callable[[str], None]):
    """Classic TensorRT: load the timing cache file if present; an empty one when it does not fit."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"timing cache {path} does not match this TensorRT/GPU; starting an empty one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def build_serialized_engine(onnx_path: str | Path, onnx_sidecar: dict, *, library: str = "tensorrt-rtx",
                            targets: Targets | None = None, workspace_gb: float = DEFAULT_WORKSPACE_GB,
                            timing_cache_path: str | Path | None = None,
                            log: Callable[[str], None] = print) -> BuiltEngine:
    """Parse ``onnx_path`` into a strongly-typed network and build it; the engine bytes and kernel report.

    One optimisation profile, :func:`gtasr_deploy.contract.profile_shapes` of the graph's sidecar.
    ``targets``: TensorRT for RTX only (default: this GPU, else :data:`DEFAULT_AOT_TARGETS`).
    ``timing_cache_path``: classic TensorRT only. Raises EngineBuildError with one line on failure.
    """
    onnx_path = Path(onnx_path)
    if not workspace_gb > 0:
        raise ConfigError(f"TensorRT build: workspace_gb is {workspace_gb!r}, expected a positive number of GiB")
    lib = LIBRARIES[library]
    trt = import_library(library)
    if lib.ahead_of_time and targets is None:
        targets = resolve_targets(library, "auto", local_gpu())
    logger = _capturing_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(format_parser_errors(parser, onnx_path))
    _check_network_inputs(network, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for name, (shape_min, shape_opt, shape_max) in contract.profile_shapes(onnx_sidecar).items():
        profile.set_shape(name, shape_min, shape_opt, shape_max)
    config.add_optimization_profile(profile)
    if lib.ahead_of_time:
        _set_targets(trt, config, targets)
    timing_path = None if lib.ahead_of_time or timing_cache_path is None else Path(timing_cache_path)
    _attach_timing_cache(config, timing_path, log)

    serialized = builder.build_serialized_network(network, config)
    names = targets.names if targets is not None else ("this GPU",)
    if serialized is None:
        raise EngineBuildError(format_build_error(logger.errors, onnx_path, names))
    if timing_path is not None and config.get_timing_cache() is not None:
        atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    return BuiltEngine(data=bytes(serialized), kernels=parse_kernel_report(logger.kernel_report))


# ---------------------------------------------------------------------------- the cache beside the graph


def graph_spec(onnx_path: Path) -> dict:
    """The graph's validated sidecar, after checking the graph file is the one it describes."""
    if not onnx_path.is_file():
        raise ConfigError(f"TensorRT build: ONNX graph {onnx_path} not found; export it first with gtasr-export")
    sidecar = contract.read_onnx_sidecar(onnx_path)
    actual_sha = trt_cache.file_sha256(onnx_path)
    if actual_sha != sidecar["onnx_sha256"]:
        raise ConfigError(f"TensorRT build: {onnx_path} has sha256 {actual_sha[:16]}…, its sidecar records "
                          f"{sidecar['onnx_sha256'][:16]}…; the graph changed after export — re-export it")
    return sidecar


def get_or_build_engine(onnx_path: str | Path, *, engine_dir: str | Path | None = None, library: str = "auto",
                        targets: str | Sequence[str] = "auto", workspace_gb: float = DEFAULT_WORKSPACE_GB,
                        timing_cache: str | Path | None = None, rebuild: bool = False,
                        log: Callable[[str], None] = print) -> Path:
    """Path of the engine for ``onnx_path`` with these settings: a matching cached one, else a fresh build.

    ``engine_dir`` None writes beside the graph. The engine and its sidecar are written atomically;
    the sidecar holds every setting that shapes the engine (library and version, targets, profile,
    batch range, precision, graph sha256), so a changed setting gives another file name and a build.
    """
    onnx_path = Path(onnx_path)
    sidecar = graph_spec(onnx_path)
    gpu = local_gpu()
    name = pick_library(library, gpu)
    trt = import_library(name)
    chosen = resolve_targets(name, targets, gpu)
    spec = trt_cache.EngineSpec.from_onnx_sidecar(sidecar, library=name, library_version=str(trt.__version__),
                                                  targets=chosen.names, build_gpu=chosen.build_gpu)
    engine_dir = onnx_path.parent if engine_dir is None else Path(engine_dir)
    engine_path = engine_dir / trt_cache.engine_file_name(spec, onnx_path.stem)
    decision = trt_cache.cache_decision(engine_path, spec, rebuild=rebuild)
    if decision.action == "load":
        log(f"TensorRT engine: reusing {engine_path}")
        return engine_path
    log(f"TensorRT engine: building {engine_path.name} with {name} {trt.__version__} for "
        f"{','.join(chosen.names)} ({decision.reason})")
    timing_path = None
    if name == "tensorrt":
        timing_path = Path(timing_cache) if timing_cache is not None else engine_dir / trt_cache.timing_cache_file_name(
            library_version=spec.library_version, build_gpu=spec.build_gpu)
    built = build_serialized_engine(onnx_path, sidecar, library=name, targets=chosen, workspace_gb=workspace_gb,
                                    timing_cache_path=timing_path, log=log)
    engine_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_path, built.data)
    trt_cache.write_engine_sidecar(
        engine_path, spec, onnx_sidecar=sidecar, engine_sha256=hashlib.sha256(built.data).hexdigest(),
        extra={"onnx_path": str(onnx_path), "workspace_gb": workspace_gb, "opset": sidecar["opset"],
               "compute_capability": "CURRENT" if chosen.current else list(chosen.names),
               "kernels": summarize_kernels(built.kernels), "kernel_report": built.kernels})
    log(f"TensorRT engine: wrote {engine_path} ({len(built.data) / 2**20:.1f} MiB)")
    return engine_path
