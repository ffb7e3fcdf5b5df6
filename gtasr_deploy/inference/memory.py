"""Memory-aware tiles: how much memory one engine call takes, how much there is, and OOM detection.

The model: the peak extra memory of one engine call is a fixed part plus a part that grows with
the LR pixels of the batch, ``bytes ≈ fixed + per_lr_px × px × batch`` (weights are already
resident; Swin attention is windowed, so nothing grows faster than the pixel count). The
pipeline turns it into a budget — the LR px one call may take now — and runs the whole image in
one call when it fits (:func:`gtasr_deploy.tiling.choose_tile`). The per-preset numbers below were fitted to the peak RSS growth of one fp32 call in a
fresh process, measured on this project's 2-core CPU build machine with
``python benchmarks/measure_memory.py demo fp32 32 64 128 256`` (34, 61, 176, 525 MB) and
``... paper fp32 64 128`` (299, 853 MB), and are applied with a safety margin. CUDA uses free device memory
(``torch.cuda.mem_get_info``); the CPU uses the smallest of MemAvailable, the cgroup limit and
RLIMIT_AS headroom.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engines.backends import FACTS

# (fixed bytes, bytes per LR pixel) of one fp32 call, per preset (measured; see the module docstring).
MEMORY_MODEL = {"demo": (60e6, 7.1e3), "paper": (115e6, 45.1e3)}
FALLBACK_MODEL = MEMORY_MODEL["paper"]  # custom networks: assume the big one
PRECISION_FACTOR = {"fp32": 1.0, "bf16": 0.6, "fp16": 0.6}
# A backend's memory over torch eager's is its facts' memory_factor (OpenVINO 2.3, measured; see
# gtasr_deploy.engines.openvino); ONNX Runtime and TensorRT: assumed like torch.
SAFETY = 1.5  # measured peaks vary with thread count and allocator; leave room for the rest of the run
# "could not create a primitive": oneDNN's error when it cannot allocate a kernel's scratch memory
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate",
                "bad_alloc", "std::bad_alloc", "could not create a primitive")


def is_out_of_memory(err: BaseException) -> bool:
    """True for allocation failures of any backend: MemoryError, torch (CPU/CUDA), ONNX Runtime."""
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    if isinstance(err, RuntimeError) or type(err).__name__ in ("RuntimeException", "Fail", "EPFail"):
        text = str(err).lower()
        return any(message in text for message in OOM_MESSAGES)
    return False


@dataclass(frozen=True, kw_only=True)
class CallMemory:
    """Peak extra bytes of one engine call: ``fixed + per_lr_px × LR px`` (see the module docstring)."""

    fixed: float
    per_lr_px: float

    def bytes(self, lr_px: int) -> float:
        return self.fixed + self.per_lr_px * lr_px

    def budget_px(self, available: int | None) -> int | None:
        """LR px one call may take with ``available`` bytes free (safety margin included); None: unknown."""
        if available is None:
            return None
        return max(0, int((available / SAFETY - self.fixed) / self.per_lr_px))


def call_memory(preset: str | None, precision: str = "fp32", backend: str = "torch") -> CallMemory:
    """The memory model of one call for a preset, precision and backend (measured; see the docstring)."""
    fixed, per_px = MEMORY_MODEL.get(preset or "", FALLBACK_MODEL)
    backend_factor = FACTS[backend].memory_factor if backend in FACTS else 1.0
    factor = PRECISION_FACTOR.get(precision, 1.0) * backend_factor
    return CallMemory(fixed=fixed, per_lr_px=per_px * factor)


def memory_budget(device: str, memory: CallMemory) -> Callable[[], int | None]:
    """A budget function for :class:`~gtasr_deploy.inference.pipeline.Pipeline`: asked once per image."""
    return lambda: memory.budget_px(available_bytes(device))


def _cgroup_headroom() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - usage)
    return None


def _address_space_headroom() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/statm") as fh:
            size = int(fh.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return None
    return max(0, soft - size)


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None


def available_bytes(device: str = "cpu") -> int | None:
    """Memory one engine call may use now on ``device``; None when it cannot be told."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    values = [v for v in (_mem_available(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    return min(values) if values else None
