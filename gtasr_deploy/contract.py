"""The graph contract: what an exported graph of D takes and gives, and its sidecar (SPEC §4).

Read by the exporter (which writes it) and by every engine that runs a graph (ONNX Runtime,
TensorRT), so the names, shapes and sidecar schema are stated once.

Graph ``<name>_<fp32|fp16>.onnx``: dynamic batch N and dynamic LR h×w (multiples of the size
rule; the intended range, a TensorRT optimisation profile, is the sidecar's ``lr_range``), or
``<name>_tile<N>_<fp32|fp16>.onnx``: one static LR tile h×w, dynamic batch N:

=============  ==============  =======  ==================================================
tensor         shape           dtype    meaning
=============  ==============  =======  ==================================================
x_t            (N, 3, 4h, 4w)  float32  noisy upsampled LR (x_K for one-step inference)
lq             (N, 3, h, w)    float32  LR image in [-1, 1]
sigma          (N,)            float32  noise level per sample (1 for one-step inference)
norm_stats     (2, S)          float32  pooled GroupNorm (mean, variance) per group
norm_mix       (1,)            float32  0: every tile uses its own statistics; 1: norm_stats
sr             (N, 3, 4h, 4w)  float32  D(x_t, sigma, lq), not clamped
tile_stats     (N, 2, S)       float32  each sample's own GroupNorm (mean, variance)
=============  ==============  =======  ==================================================

``S`` (the sidecar's ``norm_groups``) is the number of groups over all GroupNorms in module order
(:mod:`gtasr_deploy.model.shared_norm`). The sidecar ``<stem>.json`` holds the tile, batch
range, size rule, precision, opset, the graph's sha256 and the weights it came from; ``tile_lr`` is
null for a graph with dynamic height and width.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ConfigError

FORMAT = "gtasr-onnx/3"
SCALE = 4  # the network's x4: stated here, the lowest module, and imported (model.conventions re-exports it)
PRECISIONS = ("fp32", "fp16")
INPUTS = ("x_t", "lq", "sigma", "norm_stats", "norm_mix")
OUTPUTS = ("sr", "tile_stats")
ONNX_SIDECAR_KEYS = ("format", "onnx_sha256", "tile_lr", "lr_range", "size_multiple", "batch", "precision", "opset",
                     "scale", "norm_groups")


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


def _validate_lr_range(lr_range, size_multiple: int, tile, where: str) -> dict[str, tuple[int, int]]:
    if not isinstance(lr_range, Mapping) or set(lr_range) != {"min", "opt", "max"}:
        raise ConfigError(f"{where}: 'lr_range' is {lr_range!r}, expected {{'min': [h, w], 'opt': [h, w], "
                          "'max': [h, w]}")
    out = {key: _validate_tile(lr_range[key], size_multiple, f"{where}: 'lr_range' {key}")
           for key in ("min", "opt", "max")}
    if not all(out["min"][i] <= out["opt"][i] <= out["max"][i] for i in (0, 1)):
        raise ConfigError(f"{where}: 'lr_range' {lr_range!r}, expected min <= opt <= max on each side")
    if tile is not None and not out["min"] == out["opt"] == out["max"] == tile:
        raise ConfigError(f"{where}: 'lr_range' {lr_range!r} of a static graph must be its tile {list(tile)}")
    return out


def validate_onnx_sidecar(data: Mapping, *, where: str = "ONNX sidecar") -> dict:
    """Check an exporter sidecar dict; return a normalised copy (tile_lr tuple, batch dict of ints)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {type(data).__name__}, expected a JSON object")
    missing = [k for k in ONNX_SIDECAR_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}; expected at least {list(ONNX_SIDECAR_KEYS)} "
                          "(re-export the graph with gtasr-export)")
    if data["format"] != FORMAT:
        raise ConfigError(f"{where}: format {data['format']!r}, expected {FORMAT!r} (graphs from an older "
                          "gtasr-export have another contract); re-export the graph with gtasr-export")
    out = dict(data)
    groups = data["norm_groups"]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ConfigError(f"{where}: 'norm_groups' is {groups!r}, expected a positive integer")
    sha = data["onnx_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ConfigError(f"{where}: 'onnx_sha256' is {sha!r}, expected 64 lowercase hex digits")
    multiple = data["size_multiple"]
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise ConfigError(f"{where}: 'size_multiple' is {multiple!r}, expected a positive integer")
    out["tile_lr"] = None if data["tile_lr"] is None else _validate_tile(data["tile_lr"], multiple, where)
    out["lr_range"] = _validate_lr_range(data["lr_range"], multiple, out["tile_lr"], where)
    lo, opt, hi = validate_batch_range(data["batch"], where=f"{where}: 'batch'")
    out["batch"] = {"min": lo, "opt": opt, "max": hi}
    if data["precision"] not in PRECISIONS:
        raise ConfigError(f"{where}: 'precision' is {data['precision']!r}, expected one of {list(PRECISIONS)}")
    if not isinstance(data["opset"], int) or isinstance(data["opset"], bool) or data["opset"] < 1:
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


def graph_feeds(x_t, lq, sigma, norm_stats, norm_groups: int) -> dict:
    """The graph's inputs for one call: ``norm_stats`` None runs each tile with its own statistics
    (zeros fed, ``norm_mix`` 0); pooled statistics (2, S) are shared (``norm_mix`` 1)."""
    import numpy as np

    shared = norm_stats is not None
    return {"x_t": x_t, "lq": lq, "sigma": sigma,
            "norm_stats": norm_stats if shared else np.zeros((2, norm_groups), np.float32),
            "norm_mix": np.full(1, 1.0 if shared else 0.0, np.float32)}


def lr_range_for(tile_lr: tuple[int, int] | None, *, size_multiple: int, opt: tuple[int, int],
                 max_lr: tuple[int, int]) -> dict[str, list[int]]:
    """The sidecar's ``lr_range``: a static tile, or the smallest block up to ``max_lr`` (``opt``:
    the shape a TensorRT profile is tuned for)."""
    if tile_lr is not None:
        return {key: list(tile_lr) for key in ("min", "opt", "max")}
    return {"min": [size_multiple, size_multiple], "opt": list(opt), "max": list(max_lr)}


def io_shapes(tile_lr: tuple[int, int], batch: int, norm_groups: int, scale: int = SCALE) -> dict[str, tuple[int, ...]]:
    """Shape of every graph tensor for ``batch`` tiles of ``tile_lr`` LR px (inputs, then outputs)."""
    h, w = tile_lr
    hr = (batch, 3, h * scale, w * scale)
    return {"x_t": hr, "lq": (batch, 3, h, w), "sigma": (batch,), "norm_stats": (2, norm_groups),
            "norm_mix": (1,), "sr": hr, "tile_stats": (batch, 2, norm_groups)}


def profile_shapes(sidecar: Mapping) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation-profile shapes for every input: {name: (min, opt, max)}; the batch axis and, for a
    graph with dynamic height and width, the LR sides vary (the sidecar's ``lr_range``)."""
    side = validate_onnx_sidecar(sidecar)
    keys = ("min", "opt", "max")
    shapes = [io_shapes(side["lr_range"][k], side["batch"][k], side["norm_groups"], side["scale"]) for k in keys]
    return {name: tuple(s[name] for s in shapes) for name in INPUTS}


def example_inputs(tile_lr: tuple[int, int], batch: int, *, seed: int = 0, scale: int = SCALE) -> dict[str, np.ndarray]:
    """Random float32 feeds: x_t ~ N(0,1)+up-ish content, lq in [-1,1], sigma spread over (0.2, 1]."""
    rng = np.random.default_rng(seed)
    h, w = tile_lr
    lq = rng.uniform(-1.0, 1.0, (batch, 3, h, w)).astype(np.float32)
    x_t = rng.standard_normal((batch, 3, h * scale, w * scale)).astype(np.float32)
    # sigma = 1 barely exercises the noise embedding (SPEC §1); mix in other levels
    sigma = np.linspace(1.0, 0.2, batch, dtype=np.float32) if batch > 1 else np.array([1.0], np.float32)
    return {"x_t": x_t, "lq": lq, "sigma": sigma}
