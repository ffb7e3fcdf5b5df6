"""TensorRT engine cache: keys, file names, sidecars, targets and the rebuild decision (pure, no tensorrt).

A serialized engine is valid only for the exact graph, optimisation profile, precision, TensorRT
library and version, and the GPU architectures it was compiled for. Every one of those goes into
the cache key and the engine's sidecar JSON, so a stale engine is rebuilt instead of loaded, and an
engine is refused before deserializing on a GPU that is not among its targets.

Targets are compute capabilities written ``sm89`` (RTX 40 series), ``sm86`` (RTX 30), ``sm120``
(RTX 50). TensorRT for RTX compiles one engine for several of them ahead of time, on any machine;
classic TensorRT compiles for the one GPU it runs on, so its engines also record that GPU's name.

The ONNX graph's own sidecar and I/O shapes are the graph contract (:mod:`gtasr_deploy.contract`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..contract import SCALE, profile_shapes, validate_batch_range, validate_onnx_sidecar
from ..errors import ConfigError
from ..hashing import file_sha256  # noqa: F401  (re-exported: trt_cache.file_sha256)

ENGINE_SIDECAR_FORMAT = "gtasr-trt/3"  # 3: library + targets + shape profile (was: one local GPU)
# The fields that decide whether a cached engine may be loaded: every setting that shapes the engine.
KEY_FIELDS = ("onnx_sha256", "profile", "batch_range", "precision", "library", "library_version", "targets",
              "build_gpu")
LIBRARY_NAMES = ("tensorrt-rtx", "tensorrt")
# Marketing names for the targets, so an error can say which card an engine needs.
TARGET_HARDWARE = {
    "sm75": "Turing: RTX 20 series, Quadro RTX, T4",
    "sm80": "A100, A30",
    "sm86": "Ampere RTX: RTX 30 series, RTX A-series",
    "sm87": "Jetson Orin",
    "sm89": "Ada: RTX 40 series, RTX 6000 Ada",
    "sm90": "Hopper: H100, H200, GH200",
    "sm100": "Blackwell: B200, GB200",
    "sm120": "Blackwell RTX: RTX 50 series, RTX PRO Blackwell",
    "sm121": "DGX Spark (GB10)",
}


def target_name(capability: Sequence[int]) -> str:
    """(8, 9) -> "sm89"."""
    major, minor = (int(v) for v in capability)
    return f"sm{major}{minor}"


def parse_targets(text: str) -> tuple[str, ...]:
    """"sm89, SM86,sm_120" -> ("sm86", "sm89", "sm120"); also "8.9". "current" stays as is.

    Sorted by architecture and de-duplicated, so the same set always gives the same key."""
    out = set()
    for raw in str(text).split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item in ("current", "auto"):
            out.add(item)
            continue
        m = re.fullmatch(r"(?:sm_?)?(\d{2,3})|(\d+)\.(\d)", item)
        if m is None:
            raise ConfigError(f"TensorRT targets: {raw.strip()!r} is not a compute capability; expected names like "
                              "sm86, sm89, sm120 (or 8.9), comma-separated, or 'auto'")
        out.add(f"sm{m.group(1)}" if m.group(1) else f"sm{m.group(2)}{m.group(3)}")
    if not out:
        raise ConfigError("TensorRT targets: empty list; expected e.g. 'sm89' or 'sm86,sm89,sm120' or 'auto'")
    words = sorted(t for t in out if not t.startswith("sm"))
    return (*words, *sorted((t for t in out if t.startswith("sm")), key=lambda t: int(t[2:])))


def describe_targets(targets: Sequence[str]) -> str:
    """"sm89 (Ada: RTX 40 series, ...), sm120 (...)" for error messages."""
    return ", ".join(f"{t} ({TARGET_HARDWARE[t]})" if t in TARGET_HARDWARE else t for t in targets)


Profile = tuple[tuple[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], ...]


def graph_profile(onnx_sidecar: Mapping) -> Profile:
    """The optimisation profile for a graph, as the contract states it: ((input, (min, opt, max)), ...)."""
    return tuple((name, tuple(tuple(int(d) for d in s) for s in shapes))
                 for name, shapes in profile_shapes(onnx_sidecar).items())


@dataclass(frozen=True, kw_only=True)
class EngineSpec:
    """Everything a serialized engine depends on; equal specs may share one engine file."""

    onnx_sha256: str
    profile: Profile  # every input's (min, opt, max) shape: batch and spatial range in one place
    batch_range: tuple[int, int, int]
    precision: str
    library: str  # "tensorrt-rtx" | "tensorrt"
    library_version: str
    targets: tuple[str, ...]  # ("sm86", "sm89"): the GPU architectures the engine holds code for
    build_gpu: str = ""  # GPU the builder tuned for ("" for an ahead-of-time build without a GPU)

    @classmethod
    def from_onnx_sidecar(cls, sidecar: Mapping, *, library: str, library_version: str, targets: Sequence[str],
                          build_gpu: str = "") -> EngineSpec:
        side = validate_onnx_sidecar(sidecar)
        b = side["batch"]
        return cls(onnx_sha256=side["onnx_sha256"], profile=graph_profile(side),
                   batch_range=(b["min"], b["opt"], b["max"]), precision=side["precision"], library=str(library),
                   library_version=str(library_version), targets=tuple(targets), build_gpu=str(build_gpu))

    def fields(self) -> dict:
        """JSON-friendly dict of the key fields (profile as {input: [min, opt, max]}, tuples as lists)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["profile"] = {name: [list(s) for s in shapes] for name, shapes in self.profile}
        return out


def canonical_profile(profile: Mapping | Profile) -> dict[str, list[list[int]]]:
    """{input: [[min], [opt], [max]]} from a sidecar's JSON profile or a :data:`Profile` tuple."""
    items = profile.items() if isinstance(profile, Mapping) else profile
    return {str(name): [[int(d) for d in s] for s in shapes] for name, shapes in items}


def _canonical(fields: Mapping) -> dict:
    """Normalise a key-field mapping so equal content hashes equal (tuples vs lists, int types)."""
    missing = [k for k in KEY_FIELDS if k not in fields]
    if missing:
        raise ConfigError(f"engine cache key: missing fields {missing}, expected {list(KEY_FIELDS)}")
    try:
        out = {k: str(fields[k]) for k in ("onnx_sha256", "precision", "library", "library_version", "build_gpu")}
        out["batch_range"] = [int(v) for v in fields["batch_range"]]
        out["targets"] = [str(t) for t in fields["targets"]]
        out["profile"] = canonical_profile(fields["profile"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"engine cache key: unusable field ({err}); rebuild the engine") from err
    return out


def cache_key(fields: EngineSpec | Mapping) -> str:
    """sha256 (hex) over the canonical JSON of the key fields; independent of dict ordering."""
    raw = fields.fields() if isinstance(fields, EngineSpec) else fields
    text = json.dumps(_canonical(raw), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(text: str) -> str:
    """File-name-safe form of a name or version ("NVIDIA GeForce RTX 4090" -> "NVIDIA-GeForce-RTX-4090")."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "unknown"


def engine_file_name(spec: EngineSpec, graph_stem: str) -> str:
    """``<graph stem>_<library><version>_<targets>_<key16>.engine``: readable, and unique per key."""
    library = "trtrtx" if spec.library == "tensorrt-rtx" else "trt"
    gpu = f"_{_slug(spec.build_gpu)}" if spec.build_gpu else ""
    return (f"{_slug(graph_stem)}_{library}{_slug(spec.library_version)}_{'-'.join(spec.targets)}{gpu}"
            f"_{cache_key(spec)[:16]}.engine")


def timing_cache_file_name(*, library_version: str, build_gpu: str) -> str:
    """Classic TensorRT timing caches belong to a version and a GPU, not to a graph: one file per pair."""
    return f"timing_trt{_slug(library_version)}_{_slug(build_gpu)}.cache"


def engine_sidecar_path(engine_path: str | Path) -> Path:
    return Path(engine_path).with_suffix(".json")


def write_engine_sidecar(engine_path: str | Path, spec: EngineSpec, *, onnx_sidecar: Mapping, engine_sha256: str,
                         extra: Mapping | None = None) -> Path:
    """Write ``<engine stem>.json``: the key fields, the key, the engine's sha256, the graph facts
    a runner needs (size rule, GroupNorm groups, tile or LR range) and informational extras."""
    side = validate_onnx_sidecar(onnx_sidecar)
    tile = side.get("tile_lr")
    data = {"format": ENGINE_SIDECAR_FORMAT, **spec.fields(), "cache_key": cache_key(spec),
            "engine_sha256": engine_sha256, "size_multiple": int(side["size_multiple"]),
            "norm_groups": int(side["norm_groups"]), "scale": SCALE,
            "tile_lr": None if tile is None else [int(v) for v in tile]}
    if "lr_range" in side:
        data["lr_range"] = side["lr_range"]
    if extra:
        data["build"] = dict(extra)
    path = engine_sidecar_path(engine_path)
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return path


SIDECAR_REQUIRED = (*KEY_FIELDS, "engine_sha256", "size_multiple", "norm_groups", "tile_lr")


def read_engine_sidecar(engine_path: str | Path) -> dict:
    """Read ``<engine stem>.json``; ConfigError when missing, unreadable, of another format or lacking keys."""
    path = engine_sidecar_path(engine_path)
    if not path.is_file():
        raise ConfigError(f"engine sidecar {path} not found; an engine without it cannot be checked — rebuild it "
                          "with gtasr-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"engine sidecar {path} is not readable JSON ({err}); rebuild the engine") from err
    if not isinstance(data, dict) or data.get("format") != ENGINE_SIDECAR_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"engine sidecar {path}: format {got!r}, expected {ENGINE_SIDECAR_FORMAT!r}; "
                          "rebuild the engine with gtasr-export")
    missing = [k for k in SIDECAR_REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"engine sidecar {path}: missing keys {missing}; rebuild the engine")
    if data["library"] not in LIBRARY_NAMES:
        raise ConfigError(f"engine sidecar {path}: library {data['library']!r}, expected one of "
                          f"{list(LIBRARY_NAMES)}; rebuild the engine")
    validate_batch_range(data["batch_range"], where=f"engine sidecar {path}: 'batch_range'")
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
    if sidecar.get("cache_key") != cache_key(spec):
        return "cache_key differs from the key fields (sidecar edited or corrupt)"
    return None


def check_engine_bytes(engine_path: Path, data: bytes, sidecar: Mapping) -> str | None:
    """None when ``data`` is the engine the sidecar describes, else one line why not (corrupt or swapped)."""
    if not data:
        return f"engine file {engine_path} is empty"
    got = hashlib.sha256(data).hexdigest()
    if got != sidecar.get("engine_sha256"):
        return (f"engine file {engine_path} has sha256 {got[:16]}…, its sidecar records "
                f"{str(sidecar.get('engine_sha256'))[:16]}… (corrupt, truncated or replaced)")
    return None


def runs_on(sidecar: Mapping, capability: Sequence[int], gpu_name: str) -> str | None:
    """None when an engine with this sidecar can run on a GPU of ``capability``; else one line naming
    the hardware the engine needs."""
    here = target_name(capability)
    targets = [str(t) for t in sidecar["targets"]]
    if here not in targets:
        return (f"it holds code for {describe_targets(targets)} only, and this GPU ({gpu_name}) is {here}; "
                "run it on one of those, or rebuild it on this machine (gtasr-export --trt-targets auto)")
    built_on = str(sidecar.get("build_gpu") or "")
    if sidecar["library"] == "tensorrt" and built_on and built_on != gpu_name:
        return (f"classic TensorRT built it on {built_on}, and this GPU is {gpu_name}; rebuild it here "
                "(gtasr-export), classic TensorRT engines belong to the GPU model they were built on")
    return None


@dataclass(frozen=True, kw_only=True)
class CacheDecision:
    """``action`` is "load" or "build"; ``reason`` is one line for the log."""

    action: str
    reason: str


def cache_decision(engine_path: str | Path, spec: EngineSpec, *, rebuild: bool = False) -> CacheDecision:
    """Load a cached engine only when the file exists, its sidecar matches ``spec`` and its bytes
    are the ones the sidecar recorded."""
    engine_path = Path(engine_path)
    if rebuild:
        return CacheDecision(action="build", reason="rebuild requested")
    if not engine_path.is_file():
        return CacheDecision(action="build", reason=f"no cached engine {engine_path.name}")
    try:
        sidecar = read_engine_sidecar(engine_path)
    except ConfigError as err:
        return CacheDecision(action="build", reason=str(err))
    mismatch = sidecar_mismatch(sidecar, spec) or check_engine_bytes(engine_path, engine_path.read_bytes(), sidecar)
    if mismatch:
        return CacheDecision(action="build", reason=f"cached engine {engine_path.name} is stale: {mismatch}")
    return CacheDecision(action="load", reason=f"cached engine {engine_path.name} matches")
