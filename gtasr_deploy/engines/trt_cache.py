"""TensorRT engine cache: keys, file names, sidecars and the rebuild decision (pure, no tensorrt).

A serialized TensorRT engine is only valid for the exact graph, optimisation profile, precision,
TensorRT version and GPU it was built on. Every one of those goes into the cache key and the
engine's sidecar JSON, so a stale engine is rebuilt instead of loaded (SPEC §4).

The ONNX graph's own sidecar and I/O shapes are the graph contract (:mod:`gtasr_deploy.contract`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..contract import SCALE, validate_batch_range, validate_onnx_sidecar
from ..errors import ConfigError
from ..hashing import file_sha256  # noqa: F401  (re-exported: trt_cache.file_sha256)

ENGINE_SIDECAR_FORMAT = 2  # 2: GroupNorm statistics I/O (norm_groups)
# The fields that decide whether a cached engine may be loaded (SPEC §4 cache key).
KEY_FIELDS = ("onnx_sha256", "tile_lr", "batch_range", "precision", "trt_version", "gpu_name",
              "compute_capability")


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """Everything a serialized engine depends on; equal specs may share one engine file."""

    onnx_sha256: str
    tile_lr: tuple[int, int]
    batch_range: tuple[int, int, int]
    precision: str
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    @classmethod
    def from_onnx_sidecar(cls, sidecar: Mapping, *, trt_version: str, gpu_name: str,
                          compute_capability: tuple[int, int]) -> EngineSpec:
        side = validate_onnx_sidecar(sidecar)
        b = side["batch"]
        return cls(onnx_sha256=side["onnx_sha256"], tile_lr=tuple(side["tile_lr"]),
                   batch_range=(b["min"], b["opt"], b["max"]), precision=side["precision"],
                   trt_version=str(trt_version), gpu_name=str(gpu_name),
                   compute_capability=tuple(int(v) for v in compute_capability))

    @classmethod
    def for_engine_here(cls, engine_sidecar: Mapping, *, trt_version: str, gpu_name: str,
                        compute_capability: tuple[int, int]) -> EngineSpec:
        """The spec a stored engine would need to load here: its graph fields, this machine's runtime."""
        try:
            return cls(onnx_sha256=str(engine_sidecar["onnx_sha256"]),
                       tile_lr=tuple(int(v) for v in engine_sidecar["tile_lr"]),
                       batch_range=validate_batch_range(engine_sidecar["batch_range"],
                                                        where="engine sidecar 'batch_range'"),
                       precision=str(engine_sidecar["precision"]), trt_version=str(trt_version),
                       gpu_name=str(gpu_name), compute_capability=tuple(int(v) for v in compute_capability))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"engine sidecar: unusable field ({err!r}); rebuild the engine") from err

    def fields(self) -> dict:
        """JSON-friendly dict of the key fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _canonical(fields: Mapping) -> dict:
    """Normalise a key-field mapping so equal content hashes equal (tuples vs lists, int types)."""
    missing = [k for k in KEY_FIELDS if k not in fields]
    if missing:
        raise ConfigError(f"engine cache key: missing fields {missing}, expected {list(KEY_FIELDS)}")
    out = {}
    for k in KEY_FIELDS:
        v = fields[k]
        try:
            out[k] = [int(x) for x in v] if isinstance(v, (list, tuple)) else str(v)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"engine cache key: field {k!r} is {v!r}, expected a list of integers") from err
    return out


def cache_key(fields: EngineSpec | Mapping) -> str:
    """sha256 (hex) over the canonical JSON of the key fields; independent of dict ordering."""
    raw = fields.fields() if isinstance(fields, EngineSpec) else fields
    text = json.dumps(_canonical(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(text: str) -> str:
    """File-name-safe form of a GPU name or version ("NVIDIA GeForce RTX 4090" -> "NVIDIA-GeForce-RTX-4090")."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"


def engine_file_name(spec: EngineSpec, *, prefix: str = "gtasr") -> str:
    """Readable and unique: every key field in clear, then the first 16 hex digits of the key."""
    h, w = spec.tile_lr
    lo, opt, hi = spec.batch_range
    major, minor = spec.compute_capability
    return (f"{_slug(prefix)}_{h}x{w}_b{lo}-{opt}-{hi}_{spec.precision}_onnx-{spec.onnx_sha256[:12]}"
            f"_trt{_slug(spec.trt_version)}_{_slug(spec.gpu_name)}_sm{major}{minor}"
            f"_{cache_key(spec)[:16]}.engine")


def timing_cache_file_name(*, trt_version: str, gpu_name: str, compute_capability: tuple[int, int]) -> str:
    """Timing caches are tied to a TensorRT version and device, not to a graph: one file per pair."""
    major, minor = compute_capability
    return f"timing_trt{_slug(trt_version)}_{_slug(gpu_name)}_sm{major}{minor}.cache"


def engine_sidecar_path(engine_path: str | Path) -> Path:
    return Path(engine_path).with_suffix(".json")


def write_engine_sidecar(engine_path: str | Path, spec: EngineSpec, *, size_multiple: int, norm_groups: int,
                         extra: Mapping | None = None) -> Path:
    """Write ``<engine stem>.json`` with the key fields, the key itself and informational extras."""
    data = {"format": ENGINE_SIDECAR_FORMAT, **spec.fields(), "cache_key": cache_key(spec),
            "size_multiple": int(size_multiple), "norm_groups": int(norm_groups), "scale": SCALE}
    if extra:
        data["build"] = dict(extra)
    path = engine_sidecar_path(engine_path)
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return path


def read_engine_sidecar(engine_path: str | Path) -> dict:
    """Read ``<engine stem>.json``; ConfigError when missing, unreadable or lacking key fields."""
    path = engine_sidecar_path(engine_path)
    if not path.is_file():
        raise ConfigError(f"engine sidecar {path} not found; rebuild the engine (gtasr-export --tensorrt)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"engine sidecar {path} is not readable JSON ({err}); rebuild the engine") from err
    missing = [k for k in (*KEY_FIELDS, "size_multiple", "norm_groups") if k not in data]
    if missing:
        raise ConfigError(f"engine sidecar {path}: missing keys {missing}; rebuild the engine")
    return data


def sidecar_mismatch(sidecar: Mapping, spec: EngineSpec) -> str | None:
    """Name the first key field where a stored engine differs from what is needed now, or None."""
    try:
        stored = _canonical(sidecar)
    except ConfigError as err:
        return str(err)
    wanted = _canonical(spec.fields())
    for k in KEY_FIELDS:
        if stored[k] != wanted[k]:
            return f"{k} differs: engine has {stored[k]!r}, needed {wanted[k]!r}"
    if sidecar.get("cache_key") not in (None, cache_key(spec)):
        return "cache_key differs from the key fields (sidecar edited or corrupt)"
    return None


@dataclass(frozen=True, kw_only=True)
class CacheDecision:
    """``action`` is "load" or "build"; ``reason`` is one line for the log."""

    action: str
    reason: str


def cache_decision(engine_path: str | Path, spec: EngineSpec, *, rebuild: bool = False) -> CacheDecision:
    """Load a cached engine only when the file exists and its sidecar matches ``spec`` exactly."""
    engine_path = Path(engine_path)
    if rebuild:
        return CacheDecision(action="build", reason="rebuild requested")
    if not engine_path.is_file():
        return CacheDecision(action="build", reason=f"no cached engine {engine_path.name}")
    if engine_path.stat().st_size == 0:
        return CacheDecision(action="build", reason=f"cached engine {engine_path.name} is empty")
    try:
        sidecar = read_engine_sidecar(engine_path)
    except ConfigError as err:
        return CacheDecision(action="build", reason=str(err))
    mismatch = sidecar_mismatch(sidecar, spec)
    if mismatch:
        return CacheDecision(action="build", reason=f"cached engine {engine_path.name} is stale: {mismatch}")
    return CacheDecision(action="load", reason=f"cached engine {engine_path.name} matches")
