"""The one engine interface every backend implements (torch, onnxruntime, tensorrt).

An engine evaluates the one-step denoiser D on host arrays of a fixed-shape batch::

    sr = engine(x_t=x_t, lq=lq, sigma=sigma)                        # each tile its own GroupNorm statistics
    stats = engine.tile_statistics(x_t=x_t, lq=lq, sigma=sigma)     # (N, 2, S) those statistics
    sr = engine(x_t=x_t, lq=lq, sigma=sigma, norm_stats=pooled)     # every tile normalised with ``pooled``

* ``x_t``   float32 (N, 3, 4h, 4w) — noisy upsampled LR, values around [-1, 1] plus noise
* ``lq``    float32 (N, 3, h, w)   — the LR image in [-1, 1]
* ``sigma`` float32 (N,)           — noise level per sample (1.0 for one-step inference)
* ``norm_stats`` float32 (2, S)    — pooled GroupNorm (mean, variance), :mod:`gtasr_deploy.model.shared_norm`
* ``sr``    float32 (N, 3, 4h, 4w) — D(x_t, sigma, lq), not clamped

What an engine can do is data, read by its callers — never an exception to catch: each engine
class declares its backend's facts (:class:`BackendFacts`: precisions, devices, the pip extra that
installs it, whether it runs an exported graph), which the factory, ``--precision auto``,
gtasr-check and gtasr-bench read; an open engine states its shapes in :class:`EngineInfo` (static
tile or any shape, batch range, precision, normalisation modes) and carries its backend's facts.
Keyword-only arguments on purpose: the authors' module takes ``(x_t, sigma, lq)``, exported
graphs take ``(x_t, lq, sigma)``; names cannot be confused, positions can.
Host arrays on purpose: tiles are blended on the host, so image size is bounded by RAM.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..contract import SCALE
from ..errors import ConfigError, InputError

NORM_MODES = ("tile", "shared")  # per-tile GroupNorm statistics; statistics shared across an image's tiles


@dataclass(frozen=True, kw_only=True)
class BackendFacts:
    """What a backend is before any engine is opened: stated once, next to its engine class.

    ``precisions``: what it computes. ``devices``: the device kinds it runs on ("cpu", "cuda").
    ``extra``: the pip extra that installs its runtime (None: part of the base install), whose
    ``modules`` must be importable. ``graph``: runs an exported ONNX graph, not the torch model;
    ``graph_precisions``: the graphs it accepts; ``precision_from_graph``: it runs the graph's own
    precision (else it compiles the fp32 graph in the precision asked for). ``native_bf16``: on a
    CPU with native bf16 units ``--precision auto`` may pick bf16 for it. ``memory_factor``: its
    peak memory of one call over torch's (:mod:`gtasr_deploy.inference.memory`)."""

    name: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    extra: str | None = None
    modules: tuple[str, ...] = ()
    graph: bool = False
    graph_precisions: tuple[str, ...] = ()
    precision_from_graph: bool = False
    native_bf16: bool = False
    memory_factor: float = 1.0

    @property
    def install_hint(self) -> str | None:
        """``pip install 'gtasr-deploy[extra]'``, or None for a backend of the base install."""
        return None if self.extra is None else f"pip install 'gtasr-deploy[{self.extra}]'"

    def runs_on(self, device: str) -> bool:
        """Whether ``device`` ("cpu", "cuda", "cuda:1", ...) is of a kind this backend runs on."""
        return str(device).split(":", 1)[0] in self.devices

    def graph_precision(self, precision: str) -> str | None:
        """The precision of the exported graph it runs to compute ``precision`` (None: no graph)."""
        if not self.graph:
            return None
        return precision if self.precision_from_graph else self.graph_precisions[0]

    def installed(self) -> bool:
        """Its runtime's modules are importable (looked up, not imported)."""
        return all(importlib.util.find_spec(name) is not None for name in self.modules)


@dataclass(frozen=True, kw_only=True)
class EngineInfo:
    """What a caller needs to drive an engine: static shape, batch range, precision, device."""

    backend: str  # "torch" | "onnxruntime" | "openvino" | "tensorrt" (its facts' name)
    device: str  # "cpu", "cuda:0", "CUDAExecutionProvider", ...
    precision: str  # "fp32" | "bf16" | "fp16"
    size_multiple: int  # every LR side must be a multiple of this (SPEC §2 size rule)
    tile_lr: tuple[int, int] | None  # static LR (h, w) the engine was built for; None = any valid shape
    batch_range: tuple[int, int, int]  # (min, opt, max) batch the engine accepts
    norm_groups: int  # S: groups over all GroupNorms (length of the statistics vectors)
    norm_modes: tuple[str, ...] = NORM_MODES
    scale: int = SCALE
    lr_max: tuple[int, int] | None = None  # largest LR (h, w) a call may take (a TensorRT profile); None = any
    facts: BackendFacts | None = None  # what the backend is (its engine class's facts); None for test doubles

    @property
    def max_batch(self) -> int:
        return self.batch_range[2]


class Engine(abc.ABC):
    """Base class: one lifecycle (construct → call many times → close) and one input check."""

    facts: ClassVar[BackendFacts]
    info: EngineInfo

    def __call__(self, *, x_t: np.ndarray, lq: np.ndarray, sigma: np.ndarray,
                 norm_stats: np.ndarray | None = None) -> np.ndarray:
        x_t, lq, sigma = self.check_inputs(x_t=x_t, lq=lq, sigma=sigma)
        if norm_stats is not None:
            norm_stats = self._check_norm_stats(norm_stats)
        sr, _ = self._run(x_t, lq, sigma, norm_stats, False)
        return sr

    def tile_statistics(self, *, x_t: np.ndarray, lq: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """float32 (N, 2, S): each sample's own GroupNorm (mean, variance), in module order."""
        x_t, lq, sigma = self.check_inputs(x_t=x_t, lq=lq, sigma=sigma)
        self._need_mode("shared")
        _, stats = self._run(x_t, lq, sigma, None, True)
        return stats

    @abc.abstractmethod
    def _run(self, x_t: np.ndarray, lq: np.ndarray, sigma: np.ndarray, norm_stats: np.ndarray | None,
             want_stats: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Evaluate D on validated, contiguous float32 arrays: (sr, tile statistics if ``want_stats``)."""

    def _need_mode(self, mode: str) -> None:
        if mode not in self.info.norm_modes:
            raise ConfigError(f"{self.info.backend} engine: normalisation mode {mode!r} is not supported "
                              f"by this engine (it supports {list(self.info.norm_modes)})")

    def _check_norm_stats(self, norm_stats) -> np.ndarray:
        self._need_mode("shared")
        norm_stats = np.ascontiguousarray(norm_stats, dtype=np.float32)
        expected = (2, self.info.norm_groups)
        if tuple(norm_stats.shape) != expected:
            raise InputError(f"{self.info.backend} engine: input 'norm_stats' has shape "
                             f"{tuple(norm_stats.shape)}, expected {expected}")
        return norm_stats

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_inputs(self, *, x_t, lq, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate shapes against this engine; errors name the tensor and compare got vs expected."""
        info = self.info
        x_t = np.ascontiguousarray(x_t, dtype=np.float32)
        lq = np.ascontiguousarray(lq, dtype=np.float32)
        sigma = np.ascontiguousarray(np.asarray(sigma, dtype=np.float32).reshape(-1))
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise InputError(f"{info.backend} engine: input 'lq' must be (N, 3, h, w), got {tuple(lq.shape)}")
        n, _, h, w = lq.shape
        expected_x = (n, 3, h * info.scale, w * info.scale)
        if tuple(x_t.shape) != expected_x:
            raise InputError(
                f"{info.backend} engine: input 'x_t' has shape {tuple(x_t.shape)}, expected {expected_x} "
                f"(4x the 'lq' shape {tuple(lq.shape)})"
            )
        if sigma.shape[0] == 1 and n > 1:
            sigma = np.repeat(sigma, n)
        if sigma.shape != (n,):
            raise InputError(f"{info.backend} engine: input 'sigma' has shape {tuple(sigma.shape)}, expected ({n},)")
        if info.tile_lr is not None and (h, w) != tuple(info.tile_lr):
            raise InputError(
                f"{info.backend} engine: input 'lq' is {h}x{w} LR px, but this engine was built for "
                f"static tiles of {info.tile_lr[0]}x{info.tile_lr[1]}; got shape {tuple(lq.shape)}, "
                f"expected (N, 3, {info.tile_lr[0]}, {info.tile_lr[1]})"
            )
        if info.lr_max is not None and (h > info.lr_max[0] or w > info.lr_max[1]):
            raise InputError(
                f"{info.backend} engine: input 'lq' is {h}x{w} LR px, larger than the engine's largest shape "
                f"{info.lr_max[0]}x{info.lr_max[1]}; got shape {tuple(lq.shape)}"
            )
        if h % info.size_multiple or w % info.size_multiple:
            raise InputError(
                f"{info.backend} engine: input 'lq' is {h}x{w}; both sides must be multiples of "
                f"{info.size_multiple} (pad the image first)"
            )
        lo, _, hi = info.batch_range
        if not lo <= n <= hi:
            raise InputError(f"{info.backend} engine: batch {n} outside the engine's range [{lo}, {hi}]")
        return x_t, lq, sigma
