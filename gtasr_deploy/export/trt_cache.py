"""TensorRT engine cache: keys, file names, sidecars and the rebuild decision (pure, no tensorrt).

A serialized TensorRT engine is only valid for the exact graph, optimisation profile, precision,
TensorRT version and GPU it was built on. Every one of those goes into the cache key and the
engine's sidecar JSON, so a stale engine is rebuilt instead of loaded (SPEC §4).

Also home of :func:`read_onnx_sidecar`, the validator for the sidecar the ONNX exporter writes
next to ``export/<name>_tile<N>_<fp32|fp16>.onnx``, and :func:`profile_shapes`, the one place
where the (min, opt, max) input shapes of the batch profile are derived from it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..errors import ConfigError
from ..hashing import file_sha256  # noqa: F401  (re-exported: trt_cache.file_sha256)

SCALE = 4
PRECISIONS = ("fp32", "fp16")
ONNX_SIDECAR_KEYS = ("onnx_sha256", "tile_lr", "size_multiple", "batch", "precision", "opset", "scale")
ENGINE_SIDECAR_FORMAT = 1
# The fields that decide whether a cached engine may be loaded (SPEC §4 cache key).
KEY_FIELDS = ("onnx_sha256", "tile_lr", "batch_range", "precision", "trt_version", "gpu_name",
              "compute_capability")


def sidecar_path_for(onnx_path: str | Path) -> Path:
    """``export/x.onnx`` -> ``export/x.json`` (the sidecar shares the graph's stem)."""
    return Path(onnx_path).with_suffix(".json")


def validate_batch_range(batch, *, where: str = "batch range") -> tuple[int, int, int]:
    """Accept {"min","opt","max"} or a 3-sequence; return (min, opt, max) with 1 <= min <= opt <= max."""
    if isinstance(batch, Mapping):
        missing = [k for k in ("min", "opt", "max") if k not in batch]
        if missing:
            raise ConfigError(f"{where}: missing {missing}, expected keys 'min', 'opt', 'max'")
        values = (batch["min"], batch["opt"], batch["max"])
    else:
        values = tuple(batch)
        if len(values) != 3:
            raise ConfigError(f"{where}: got {values!r}, expected (min, opt, max)")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: got {values!r}, expected three integers (min, opt, max)")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"{where}: got min={lo} opt={opt} max={hi}, expected 1 <= min <= opt <= max")
    return lo, opt, hi


def _validate_tile(tile, size_multiple: int, where: str) -> tuple[int, int]:
    if (not isinstance(tile, (list, tuple)) or len(tile) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in tile)):
        raise ConfigError(f"{where}: 'tile_lr' is {tile!r}, expected [h, w] with positive integers")
    h, w = tile
    if h % size_multiple or w % size_multiple:
        raise ConfigError(f"{where}: 'tile_lr' {h}x{w} is not a multiple of size_multiple={size_multiple}")
    return h, w


def validate_onnx_sidecar(data: Mapping, *, where: str = "ONNX sidecar") -> dict:
    """Check an exporter sidecar dict; return a normalised copy (tile_lr tuple, batch dict of ints)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {type(data).__name__}, expected a JSON object")
    missing = [k for k in ONNX_SIDECAR_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}; expected at least {list(ONNX_SIDECAR_KEYS)} "
                          "(re-export the graph with gtasr-export)")
    out = dict(data)
    sha = data["onnx_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{where}: 'onnx_sha256' is {sha!r}, expected 64 lowercase hex digits")
    multiple = data["size_multiple"]
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise ConfigError(f"{where}: 'size_multiple' is {multiple!r}, expected a positive integer")
    out["tile_lr"] = _validate_tile(data["tile_lr"], multiple, where)
    lo, opt, hi = validate_batch_range(data["batch"], where=f"{where}: 'batch'")
    out["batch"] = {"min": lo, "opt": opt, "max": hi}
    if data["precision"] not in PRECISIONS:
        raise ConfigError(f"{where}: 'precision' is {data['precision']!r}, expected one of {list(PRECISIONS)}")
    if not isinstance(data["opset"], int) or data["opset"] < 1:
        raise ConfigError(f"{where}: 'opset' is {data['opset']!r}, expected a positive integer")
    if data["scale"] != SCALE:
        raise ConfigError(f"{where}: 'scale' is {data['scale']!r}, expected {SCALE}")
    return out


def read_onnx_sidecar(path: str | Path) -> dict:
    """Read and validate the sidecar of an exported graph; ``path`` is the .onnx or the .json."""
    path = Path(path)
    json_path = path if path.suffix == ".json" else sidecar_path_for(path)
    if not json_path.is_file():
        raise ConfigError(f"ONNX sidecar {json_path} not found; expected it next to the graph "
                          "(re-export the graph with gtasr-export)")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"ONNX sidecar {json_path} is not readable JSON ({err}); re-export the graph") from err
    return validate_onnx_sidecar(data, where=f"ONNX sidecar {json_path}")


def profile_shapes(sidecar: Mapping) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation-profile shapes for every input: {name: (min, opt, max)}.

    Only the batch axis varies; x_t is (N, 3, 4h, 4w), lq (N, 3, h, w), sigma (N,).
    """
    side = validate_onnx_sidecar(sidecar)
    h, w = side["tile_lr"]
    scale = side["scale"]
    batches = (side["batch"]["min"], side["batch"]["opt"], side["batch"]["max"])
    per_input = {
        "x_t": lambda n: (n, 3, h * scale, w * scale),
        "lq": lambda n: (n, 3, h, w),
        "sigma": lambda n: (n,),
    }
    return {name: tuple(shape(n) for n in batches) for name, shape in per_input.items()}


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


def write_engine_sidecar(engine_path: str | Path, spec: EngineSpec, *, size_multiple: int,
                         extra: Mapping | None = None) -> Path:
    """Write ``<engine stem>.json`` with the key fields, the key itself and informational extras."""
    data = {"format": ENGINE_SIDECAR_FORMAT, **spec.fields(), "cache_key": cache_key(spec),
            "size_multiple": int(size_multiple), "scale": SCALE}
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
    missing = [k for k in (*KEY_FIELDS, "size_multiple") if k not in data]
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
