"""``--precision auto``: the fastest precision this processor computes natively (SPEC §4 islands kept).

* CPU: bf16 where the processor has native bf16 arithmetic (x86 AMX-BF16 or AVX512-BF16, Arm
  BF16) *and* bf16 matrix products measured here run at least 1.15x the fp32 speed; fp32
  elsewhere (emulated bf16 is slower than fp32). The flag alone is not enough: on one of this
  project's build machines (Intel Xeon with AVX512-BF16, no AMX) bf16 matmuls ran at 0.6x fp32 and
  the paper network in bf16 at 0.7-0.8x; on another (AMD EPYC, AVX512-BF16) bf16 was 1.6x (torch)
  to 2.5x (OpenVINO) faster. The measurement (a 1024² matmul each way, about 0.2 s) is cached per
  CPU model, flags, torch version and thread count in ``<cache>/cpu_bf16.json``; a corrupt or
  foreign file is measured again.
* CUDA: fp16 (tensor cores on every CUDA GPU torch supports).
* ONNX Runtime / TensorRT: the exported graph's own precision (fp32 or fp16 graph).
* OpenVINO: as the CPU (bf16 or fp32), from the fp32 graph.

Which backend runs the graph's precision and which may compute bf16 are the backends' facts
(:data:`gtasr_deploy.engines.backends.FACTS`: ``precision_from_graph``, ``native_bf16``), read here.

Detection is a small pure function of the CPU's feature flags (tested with fake lists); the
choice and its reason are printed in the run header.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..contract import read_onnx_sidecar
from ..errors import ConfigError
from ..paths import cache_root
from .backends import FACTS

PRECISIONS = ("fp32", "bf16", "fp16")
CHOICES = ("auto", *PRECISIONS)
# feature flag → the name printed in the header, best first (Linux /proc/cpuinfo spellings)
NATIVE_BF16 = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))
BF16_MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much (measured) before auto picks it


@dataclass(frozen=True, kw_only=True)
class PrecisionChoice:
    precision: str
    reason: str

    def header(self) -> str:
        return f"{self.precision} ({self.reason})"


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """Feature flags of the first CPU from ``/proc/cpuinfo`` text ('flags' on x86, 'Features' on Arm)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(features: Iterable[str], machine: str | None = None) -> str | None:
    """The name of the native bf16 unit among ``features``, or None. 'bf16' counts on Arm only."""
    features = set(features)
    machine = (machine or platform.machine()).lower()
    for flag, name in NATIVE_BF16:
        if flag in features and (flag != "bf16" or machine in ("aarch64", "arm64")):
            return name
    return None


def _runs_graph_precision(backend: str) -> bool:
    """Whether ``backend`` (a name, or "auto") runs its graph's own precision (its facts say so)."""
    return backend in FACTS and FACTS[backend].precision_from_graph


def _may_choose_bf16(backend: str) -> bool:
    """Whether auto may pick bf16 for ``backend`` ("auto": torch or OpenVINO, both may)."""
    return backend not in FACTS or FACTS[backend].native_bf16


def choose_precision(requested: str, *, device: str, backend: str, features: Iterable[str],
                     machine: str | None = None, graph_precision: str | None = None,
                     bf16_speedup: float | None = None) -> PrecisionChoice:
    """Pure: the precision to run and why. ``graph_precision``: that of an exported graph, if one is
    used; ``bf16_speedup``: bf16 over fp32 matmul speed measured on this CPU (None: not measured)."""
    if requested not in CHOICES:
        raise ConfigError(f"precision {requested!r}, expected one of {list(CHOICES)}")
    if _runs_graph_precision(backend) or (backend == "auto" and graph_precision is not None):
        if graph_precision is None:
            return PrecisionChoice(precision="fp32", reason="the exported graph's precision")
        if requested not in ("auto", graph_precision):
            raise ConfigError(f"precision {requested} requested, but the exported graph is {graph_precision}; "
                              "export a graph of that precision (gtasr-export --fp16) or use --precision auto")
        return PrecisionChoice(precision=graph_precision, reason="the exported graph's precision")
    if requested != "auto":
        return PrecisionChoice(precision=requested, reason="requested")
    if str(device).startswith("cuda"):
        return PrecisionChoice(precision="fp16", reason="CUDA: fp16 tensor cores")
    unit = native_bf16(features, machine) if _may_choose_bf16(backend) else None
    if unit is not None and bf16_speedup is not None and bf16_speedup < BF16_MIN_SPEEDUP:
        return PrecisionChoice(precision="fp32", reason=f"this CPU has {unit}, but bf16 matmuls ran at "
                                                        f"{bf16_speedup:.2f}x the fp32 speed here (measured)")
    if unit is not None:
        measured = "" if bf16_speedup is None else f" (bf16 matmuls {bf16_speedup:.1f}x fp32, measured)"
        return PrecisionChoice(precision="bf16", reason=f"this CPU has {unit}{measured}")
    return PrecisionChoice(precision="fp32", reason="this CPU has no native bf16 (AMX-BF16/AVX512-BF16); "
                                                    "emulated bf16 would be slower")


def resolve_precision(requested: str, *, device: str, backend: str, onnx=None) -> PrecisionChoice:
    """:func:`choose_precision` for this machine (reads /proc/cpuinfo and the graph's sidecar)."""
    graph_precision = None
    if onnx is not None and backend != "torch":
        graph_precision = read_onnx_sidecar(onnx)["precision"]
    features = cpu_features()
    speedup = None
    if requested == "auto" and not str(device).startswith("cuda") and native_bf16(features) is not None \
            and not _runs_graph_precision(backend) and graph_precision in (None, "fp32"):
        speedup = measured_bf16_speedup(features)
    return choose_precision(requested, device=device, backend=backend, features=features,
                            graph_precision=graph_precision, bf16_speedup=speedup)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":", 1)[0].strip().lower() in ("model name", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_matmul(dtype, size: int = 1024, reps: int = 5) -> float:
    import time

    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):  # warm-up: kernel selection
        a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def measured_bf16_speedup(features: Iterable[str], *, cache: Path | None = None) -> float:
    """fp32 time / bf16 time of a 1024² matmul on this CPU (> 1: bf16 is faster); cached (module docstring)."""
    import json

    import torch


    path = cache or cache_root() / "cpu_bf16.json"
    features = set(features)
    key = {"cpu": _cpu_model(), "flags": sorted(f for f, _ in NATIVE_BF16 if f in features),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("key") == key and isinstance(data.get("speedup"), (int, float)) \
                and 0 < data["speedup"] < 100:
            return float(data["speedup"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    speedup = _time_matmul(torch.float32) / _time_matmul(torch.bfloat16)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"key": key, "speedup": speedup}).encode("utf-8"))
    except OSError:
        pass  # a read-only cache: measure again next time
    return speedup
