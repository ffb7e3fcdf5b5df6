"""``--precision auto``: the fastest precision this processor computes natively (SPEC §4 islands kept).

* CPU: bf16 where the processor has native bf16 arithmetic (x86 AMX-BF16 or AVX512-BF16, Arm
  BF16); fp32 elsewhere — emulated bf16 is slower than fp32.
* CUDA: fp16 (tensor cores on every CUDA GPU torch supports).
* ONNX Runtime / TensorRT: the exported graph's own precision (fp32 or fp16 graph).
* OpenVINO: as the CPU (bf16 or fp32), from the fp32 graph.

Detection is a small pure function of the CPU's feature flags (tested with fake lists); the
choice and its reason are printed in the run header.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
CHOICES = ("auto", *PRECISIONS)
# feature flag → the name printed in the header, best first (Linux /proc/cpuinfo spellings)
NATIVE_BF16 = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))


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


def choose_precision(requested: str, *, device: str, backend: str, features: Iterable[str],
                     machine: str | None = None, graph_precision: str | None = None) -> PrecisionChoice:
    """Pure: the precision to run and why. ``graph_precision``: that of an exported graph, if one is used."""
    if requested not in CHOICES:
        raise ConfigError(f"precision {requested!r}, expected one of {list(CHOICES)}")
    if backend in ("onnxruntime", "tensorrt") or (backend == "auto" and graph_precision is not None):
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
    unit = native_bf16(features, machine)
    if unit is not None:
        return PrecisionChoice(precision="bf16", reason=f"this CPU has {unit}")
    return PrecisionChoice(precision="fp32", reason="this CPU has no native bf16 (AMX-BF16/AVX512-BF16); "
                                                    "emulated bf16 would be slower")


def resolve_precision(requested: str, *, device: str, backend: str, onnx=None) -> PrecisionChoice:
    """:func:`choose_precision` for this machine (reads /proc/cpuinfo and the graph's sidecar)."""
    graph_precision = None
    if onnx is not None and backend != "torch":
        from .contract import read_onnx_sidecar

        graph_precision = read_onnx_sidecar(onnx)["precision"]
    return choose_precision(requested, device=device, backend=backend, features=cpu_features(),
                            graph_precision=graph_precision)
