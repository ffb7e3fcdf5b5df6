"""Choose ONNX Runtime execution providers and their options (pure; onnxruntime only if asked).

Order on a GPU machine with onnxruntime-gpu: TensorRT EP → CUDA EP → CPU EP. ONNX Runtime
assigns each node to the first provider in the list that supports it, so the later ones catch what
the earlier ones cannot run.

TensorRT EP notes (ONNX Runtime docs, "TensorRT Execution Provider"):
* engines and timing caches are kept on disk under the engines directory, so the minutes-long
  build happens once per graph, GPU and TensorRT version;
* explicit profile shapes (``trt_profile_{min,opt,max}_shapes``, "name:d0xd1x...,name2:...")
  pin the batch range from the graph's sidecar, otherwise the EP rebuilds whenever a new batch
  size appears;
* ``trt_fp16_enable`` lets TensorRT pick fp16 kernels for an fp32 graph. For a graph already
  exported in fp16 it stays off: the EP then builds a strongly-typed network that keeps the
  graph's fp32 islands (GroupNorm, softmax) in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import BackendUnavailableError, ConfigError
from ..contract import profile_shapes

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
# Short names a user may type, and the full ONNX Runtime names, both accepted case-insensitively.
PROVIDER_NAMES = {"tensorrt": TENSORRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
VALID_REQUESTS = ("auto", *PROVIDER_NAMES, *PROVIDER_NAMES.values())
DEFAULT_WORKSPACE_GB = 8.0
ORT_TRT_SUBDIR = "onnxruntime-trt"  # keeps the EP's own cache files apart from our engines
GPU_EXTRA_HINT = "pip install 'gtasr-deploy[cuda]' (onnxruntime-gpu) on a machine with an NVIDIA GPU"

ProviderList = list[tuple[str, dict]]


def _flag(value: bool) -> str:
    # ONNX Runtime parses provider options from strings; "True"/"False" is its documented form.
    return "True" if value else "False"


def normalize_request(requested: str) -> str:
    """Map a user request ("auto", "tensorrt", "CUDAExecutionProvider", ...) to "auto" or an EP name."""
    key = str(requested).strip()
    lowered = key.lower()
    if lowered == "auto":
        return "auto"
    if lowered in PROVIDER_NAMES:
        return PROVIDER_NAMES[lowered]
    for full in PROVIDER_NAMES.values():
        if lowered == full.lower():
            return full
    raise ConfigError(f"onnxruntime provider: got {requested!r}, expected one of {list(VALID_REQUESTS)}")


def profile_shape_strings(onnx_sidecar: Mapping) -> dict[str, str]:
    """The three TensorRT-EP profile options over every graph input, e.g.
    "x_t:1x3x256x256,lq:1x3x64x64,sigma:1,norm_stats:2x624,norm_mix:1" (the last two static)."""
    shapes = profile_shapes(onnx_sidecar)
    out = {}
    for index, which in enumerate(("min", "opt", "max")):
        parts = [f"{name}:{'x'.join(str(d) for d in triple[index])}" for name, triple in shapes.items()]
        out[f"trt_profile_{which}_shapes"] = ",".join(parts)
    return out


def tensorrt_provider_options(*, cache_dir: str | Path = "engines", fp16: bool = False,
                              onnx_sidecar: Mapping | None = None, workspace_gb: float = DEFAULT_WORKSPACE_GB,
                              device_id: int = 0) -> dict[str, str]:
    """Option dict for the TensorRT EP: caches under ``cache_dir``, workspace, fp16, profile shapes."""
    if not workspace_gb > 0:
        raise ConfigError(f"TensorRT EP: workspace_gb is {workspace_gb!r}, expected a positive number of GiB")
    graph_precision = None if onnx_sidecar is None else onnx_sidecar.get("precision")
    cache_path = str(Path(cache_dir) / ORT_TRT_SUBDIR)
    options = {
        "device_id": str(int(device_id)),
        "trt_max_workspace_size": str(int(workspace_gb * (1 << 30))),
        "trt_fp16_enable": _flag(fp16 and graph_precision != "fp16"),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache_path,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache_path,
    }
    if onnx_sidecar is not None:
        options.update(profile_shape_strings(onnx_sidecar))
    return options


def cuda_provider_options(*, device_id: int = 0) -> dict[str, str]:
    """Option dict for the CUDA EP; tiles have one static shape, so exhaustive conv search pays off."""
    return {
        "device_id": str(int(device_id)),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
    }


def _available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            "onnxruntime backend: the 'onnxruntime' module is not installed; install it with "
            "pip install 'gtasr-deploy[onnx]' (CPU) or 'gtasr-deploy[cuda]' (NVIDIA GPU)") from err
    return list(onnxruntime.get_available_providers())


def select_providers(requested: str = "auto", available: list[str] | None = None, *, fp16: bool = False,
                     cache_dir: str | Path = "engines", onnx_sidecar: Mapping | None = None,
                     workspace_gb: float = DEFAULT_WORKSPACE_GB, device_id: int = 0) -> ProviderList:
    """Ordered ``[(provider name, options), ...]`` for ``onnxruntime.InferenceSession(providers=...)``.

    ``requested``: "auto" (best available), "tensorrt", "cuda" or "cpu" (or the full EP name).
    ``available``: ``onnxruntime.get_available_providers()`` when None. A request for a provider
    that is not available raises BackendUnavailableError; CPU is always last.
    The caller creates ``cache_dir`` before opening the session.
    """
    wanted = normalize_request(requested)
    have = set(_available_providers() if available is None else available)
    if wanted != "auto" and wanted != CPU_EP and wanted not in have:
        raise BackendUnavailableError(
            f"onnxruntime provider {wanted} is not available here (available: {sorted(have)}); "
            f"install {GPU_EXTRA_HINT}, or request 'cpu'")
    chain = {"auto": (TENSORRT_EP, CUDA_EP), TENSORRT_EP: (TENSORRT_EP, CUDA_EP), CUDA_EP: (CUDA_EP,),
             CPU_EP: ()}[wanted]
    providers: ProviderList = []
    for name in chain:
        if name not in have:
            continue
        if name == TENSORRT_EP:
            providers.append((name, tensorrt_provider_options(
                cache_dir=cache_dir, fp16=fp16, onnx_sidecar=onnx_sidecar, workspace_gb=workspace_gb,
                device_id=device_id)))
        else:
            providers.append((name, cuda_provider_options(device_id=device_id)))
    providers.append((CPU_EP, {}))
    return providers
