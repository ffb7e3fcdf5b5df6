"""``UpscaleOptions``: everything that shapes an upscale run, as one frozen, validated value.

Every surface builds one and hands it on: ``gtasr-upscale`` from its flags, ``gtasr-serve`` from
its flags or a mapping (request JSON, TOML), the benchmark, the evaluation and the integrations
from their own settings; :class:`~gtasr_deploy.upscaler.Upscaler` takes it. Validated once, here:
a bad value is a :class:`~gtasr_deploy.errors.ConfigError` of one line that names the field, what
was got and the valid values. Variations are ``dataclasses.replace(options, seed=1)``.

>>> opts = UpscaleOptions(tile=64, seed=3)
>>> UpscaleOptions.from_mapping({"tile": "auto", "backend": "torch"})  # unknown keys are refused
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from numbers import Integral
from pathlib import Path
from typing import Any

from ..engines.factory import BACKENDS
from ..engines.precision import CHOICES as PRECISIONS
from ..errors import ConfigError
from ..model.config import NetworkConfig
from .pipeline import NORM_POLICIES, STATS_POLICIES

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
SEED_RANGE = (-2**63, 2**64 - 1)  # what numpy's and torch's generators take
TILE_VALUES = "'auto', 0 (the whole image), N > 0 (LR px, a multiple of the size rule) or (h, w)"
_DEVICE = re.compile(r"(auto|cpu|cuda)(:\d+)?")


@dataclass(frozen=True, kw_only=True)
class UpscaleOptions:
    """What an :class:`~gtasr_deploy.upscaler.Upscaler` runs: weights, backend, device, precision, tiling, seed.

    ``weights``: a ``.pth`` (official; ``param_key`` picks ``params_ema``/``params``), our
    ``.safetensors`` or a name fetched with gtasr-weights; None = the embedded demo weights.
    ``network_config``: a preset name, a network JSON or a config (None: from the file or the shapes).
    ``onnx``: an exported graph (its sidecar gives shapes and size rule; no weights needed).
    ``backend``: auto | torch | onnxruntime | openvino | tensorrt. ``device``: cpu | cuda | cuda:N |
    auto (a surface resolves auto before it opens the engine). ``precision``: auto | fp32 | bf16 |
    fp16. ``seed``: the unit noise's seed. ``tile``: "auto" (the whole image when it fits in memory,
    else the largest tiles that fit), 0 (always the whole image), N or (h, w) LR px;
    ``tile_overlap``: LR px (None: tile/8). ``batch``: tiles per engine call. ``norm``: "shared"
    (GroupNorm statistics of the whole image shared by its tiles) or "tile"; ``stats``: how shared
    statistics are gathered for a tiled image ("downscaled" or "tiles"). ``threads``: CPU threads
    (None: the engine's default). ``compile``/``channels_last``: torch engine options.
    ``graph_cache``: the graph cache folder (None: ``$GTASR_CACHE`` or ``~/.cache/gtasr_deploy``)."""

    weights: str | os.PathLike | None = None
    param_key: str = "params_ema"
    network_config: str | os.PathLike | NetworkConfig | Mapping | None = None
    backend: str = "auto"
    onnx: str | os.PathLike | None = None
    device: str = "cpu"
    precision: str = "auto"
    seed: int = 0
    tile: int | tuple[int, int] | str = "auto"
    tile_overlap: int | None = None
    batch: int = 1
    norm: str = "shared"
    stats: str = "downscaled"
    threads: int | None = None
    compile: bool = False
    channels_last: bool = False
    graph_cache: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        for name in ("weights", "onnx", "graph_cache"):  # paths compare equal however they were spelled
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                object.__setattr__(self, name, Path(value))
            elif value is not None:
                _invalid(name, value, "a path (str or os.PathLike) or None")
        if not isinstance(self.param_key, str) or not self.param_key:
            _invalid("param_key", self.param_key, "'params_ema', 'params' or another entry name of the .pth")
        if not (self.network_config is None or isinstance(self.network_config, (str, os.PathLike, NetworkConfig,
                                                                                   Mapping))):
            _invalid("network_config", self.network_config, "a preset name, a network JSON path, a config or None")
        _choice("backend", self.backend, BACKENDS)
        object.__setattr__(self, "device", _device(self.device))
        _choice("precision", self.precision, PRECISIONS)
        _integer("seed", self.seed, *SEED_RANGE)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "tile", _tile(self.tile))
        if self.tile_overlap is not None:
            _integer("tile_overlap", self.tile_overlap, 0, None, "None (tile/8) or")
        _integer("batch", self.batch, 1, None)
        _choice("norm", self.norm, NORM_POLICIES)
        _choice("stats", self.stats, STATS_POLICIES)
        if self.threads is not None:
            _integer("threads", self.threads, 1, None, "None (the engine's default) or")
        for name in ("compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                _invalid(name, getattr(self, name), "True, False")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **overrides: Any) -> UpscaleOptions:
        """From a mapping (request JSON, a TOML table, keyword arguments), then ``overrides``.

        Unknown keys are refused with the list of valid ones; ``tile`` may also be text ("auto",
        "64"), and a list for (h, w), as JSON and TOML spell them."""
        merged = {**values, **overrides}
        cls.check_keys(merged)
        if isinstance(merged.get("tile"), str):
            merged["tile"] = parse_tile(merged["tile"])
        return cls(**merged)

    def replace(self, **changes: Any) -> UpscaleOptions:
        """``dataclasses.replace`` that refuses unknown keys with the list of valid ones (and reads
        ``tile`` text as :meth:`from_mapping` does)."""
        self.check_keys(changes)
        if isinstance(changes.get("tile"), str):
            changes["tile"] = parse_tile(changes["tile"])
        return dataclasses.replace(self, **changes)

    @classmethod
    def check_keys(cls, keys) -> None:
        """ConfigError naming the unknown keys among ``keys`` and listing the valid ones."""
        unknown = sorted(set(keys) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown upscale option(s) {', '.join(map(repr, unknown))}; valid options: "
                              f"{', '.join(cls.keys())}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values (paths as text), e.g. for a report or ``--dry-run``."""
        return {name: (str(value) if isinstance(value, Path) else value)
                for name, value in ((name, getattr(self, name)) for name in self.keys())}

    @property
    def auto_tile(self) -> bool:
        return self.tile == "auto"


def parse_tile(text: str) -> int | str:
    """``--tile`` text: "auto" (any case) or a whole number of LR px; ConfigError otherwise."""
    text = str(text).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        _invalid("tile", text, TILE_VALUES)


def _invalid(name: str, got: Any, valid: str):
    raise ConfigError(f"{name}={got!r} is not valid; valid values: {valid}")


def _choice(name: str, got: Any, valid: tuple[str, ...]) -> None:
    if not isinstance(got, str) or got not in valid:
        _invalid(name, got, ", ".join(valid))


def _integer(name: str, got: Any, low: int, high: int | None, prefix: str = "") -> None:
    valid = f"{prefix} an integer {low}..{high}" if high is not None else f"{prefix} an integer >= {low}"
    if isinstance(got, bool) or not isinstance(got, Integral) or got < low or (high is not None and got > high):
        _invalid(name, got, valid.strip())


def _device(device: Any) -> str:
    text = str(device) if type(device).__name__ == "device" else device  # a torch.device reads as its name
    if not isinstance(text, str) or not _DEVICE.fullmatch(text) or text.startswith("auto:"):
        _invalid("device", device, ", ".join(DEVICES))
    return text


def _tile(tile: Any) -> int | tuple[int, int] | str:
    if tile is None or tile == "auto":
        return "auto"
    if isinstance(tile, Integral) and not isinstance(tile, bool) and tile >= 0:
        return int(tile)
    if isinstance(tile, (tuple, list)) and len(tile) == 2 and all(
            isinstance(side, Integral) and not isinstance(side, bool) and side > 0 for side in tile):
        return int(tile[0]), int(tile[1])
    _invalid("tile", tile, TILE_VALUES)
