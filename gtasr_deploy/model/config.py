"""Network configuration: presets, the authors' hyper-parameter names, and shape inference.

The network is the DDPM++ ("SongUNet") UNet of EDM with Swin layers as attention (SPEC §2).
Two presets: ``paper`` (171,518,529 parameters, the official layout) and ``demo`` (same
architecture, a few million parameters, fast on CPU).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .conventions import SCALE


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """Hyper-parameters of F. Field names follow the authors' ``network_g`` where they exist."""

    img_resolution: int = 64  # names the levels in state-dict keys ("64x64"); not the input size
    model_channels: int = 192
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    channel_mult_noise: int = 1
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (64, 32, 16, 8)
    dropout: float = 0.13
    sigma_data: float = 0.5
    scale: int = SCALE
    swin_embed_dim: int = 192
    swin_num_heads: int = 6
    swin_window_size: int = 8
    swin_mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.scale != 4:
            raise ConfigError(f"network config: scale {self.scale} is not supported; GTASR is x4 only")
        if not self.channel_mult or self.num_blocks < 1 or self.model_channels < 4:
            raise ConfigError(f"network config: invalid layout {self}")
        if self.img_resolution % (1 << (len(self.channel_mult) - 1)):
            raise ConfigError(
                f"network config: img_resolution {self.img_resolution} is not divisible by "
                f"2^{len(self.channel_mult) - 1} (one halving per level)"
            )
        if self.swin_embed_dim % self.swin_num_heads:
            raise ConfigError(
                f"network config: swin embed_dim {self.swin_embed_dim} not divisible by num_heads {self.swin_num_heads}"
            )

    # --- derived quantities -------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def level_resolution(self, level: int) -> int:
        return self.img_resolution >> level

    def has_swin(self, level: int) -> bool:
        return self.level_resolution(level) in self.attn_resolutions

    def swin_window(self, level: int, *, decoder: bool) -> int:
        """Window of a Swin layer. Release quirks (SPEC §2): the window is clamped to the layer's
        resolution, and every decoder Swin layer is built with the DEEPEST level's resolution."""
        res = self.level_resolution(self.num_levels - 1 if decoder else level)
        return min(self.swin_window_size, res)

    @property
    def size_multiple(self) -> int:
        """Every LR side must be a multiple of this: lcm(2^(L-1), 2^l * window_l over Swin layers)."""
        m = 1 << (self.num_levels - 1)
        deepest = self.num_levels - 1
        for level in range(self.num_levels):
            if self.has_swin(level):
                m = math.lcm(m, (1 << level) * self.swin_window(level, decoder=False))
                m = math.lcm(m, (1 << level) * self.swin_window(level, decoder=True))
        # the deepest level's decoder in0 block always has a Swin layer
        m = math.lcm(m, (1 << deepest) * self.swin_window(deepest, decoder=True))
        return m

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NetworkConfig":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ConfigError(f"network config: unknown keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


PRESETS: dict[str, NetworkConfig] = {
    "paper": NetworkConfig(),
    # Same architecture, small: 3 levels, Swin at the two coarse levels, window 8 (size rule 32).
    "demo": NetworkConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_blocks=1,
        attn_resolutions=(32, 16),
        swin_embed_dim=64,
        swin_num_heads=2,
        swin_window_size=8,
    ),
}

# Authors' keys we translate; the others are accepted only with the values the network supports.
_AUTHORS_FIXED = {
    "img_channels": 3,
    "label_dim": 0,
    "augment_dim": 0,
    "model_type": "SongUNet",
    "embedding_type": "positional",
    "encoder_type": "standard",
    "decoder_type": "standard",
    "resample_filter": [1, 1],
    "cond_lq": True,
    "swin": True,
    "use_enc": True,
    "upsampler": "nearest",
    "res_con": False,
}
_AUTHORS_IGNORED = {"use_fp16", "fourier_scale", "sigma_min", "type"}
_SWIN_FIXED = {"use_conv": True, "depth": 1, "patch_size": 1, "qkv_bias": True, "qk_scale": None, "patch_norm": False}
_SWIN_IGNORED = {"drop", "attn_drop", "drop_path", "use_checkpoint"}


def from_authors(network_g: Mapping[str, Any] | str | Path) -> NetworkConfig:
    """Build a config from the authors' ``network_g`` hyper-parameters (a dict or a JSON path)."""
    if isinstance(network_g, (str, Path)):
        path = Path(network_g)
        try:
            network_g = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read network config JSON: {exc}") from None
    g = dict(network_g)
    for key, expected in _AUTHORS_FIXED.items():
        if key in g and g[key] != expected:
            raise ConfigError(f"network config: {key}={g[key]!r} is not supported (expected {expected!r})")
    swin = dict(g.get("swin_params") or {})
    for key, expected in _SWIN_FIXED.items():
        if key in swin and swin[key] != expected:
            raise ConfigError(f"network config: swin_params.{key}={swin[key]!r} is not supported (expected {expected!r})")
    known = set(_AUTHORS_FIXED) | _AUTHORS_IGNORED | {"swin_params"}
    ours = {k: v for k, v in g.items() if k not in known}
    for src, dst in (("embed_dim", "swin_embed_dim"), ("num_heads", "swin_num_heads"),
                     ("window_size", "swin_window_size"), ("mlp_ratio", "swin_mlp_ratio")):
        if src in swin:
            ours[dst] = swin.pop(src)
    leftover = set(swin) - set(_SWIN_FIXED) - _SWIN_IGNORED
    if leftover:
        raise ConfigError(f"network config: unknown swin_params keys {sorted(leftover)}")
    return NetworkConfig.from_dict(ours)


def resolve_config(spec: "str | NetworkConfig | Mapping[str, Any] | Path") -> NetworkConfig:
    """A preset name, a NetworkConfig, a dict (ours or the authors' names) or a JSON path."""
    if isinstance(spec, NetworkConfig):
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"unknown preset or missing config file {str(spec)!r}; presets: {sorted(PRESETS)}")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"network config {path}: not a readable JSON file ({exc})") from None
        if not isinstance(spec, Mapping):
            raise ConfigError(f"network config {path}: expected a JSON object, got {type(spec).__name__}")
    if isinstance(spec, Mapping):
        try:
            if "swin_params" in spec or "model_type" in spec:
                return from_authors(spec)
            return NetworkConfig.from_dict(spec)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ConfigError(f"network config: invalid values ({type(exc).__name__}: {exc})") from None
    raise ConfigError(f"cannot interpret network config {spec!r}")


_LEVEL_KEY = re.compile(r"^model\.(enc|dec)\.(\d+)x\d+_(conv|down|up|in0|in1|block(\d+)|aux_norm|aux_conv)\.")


def infer_config(state: Mapping[str, Any]) -> NetworkConfig:
    """Infer the network config from state-dict shapes (spandrel-style). Keys without prefixes."""
    try:
        stem = state["model.enc." + next(k.split(".")[2] for k in state if k.endswith("_conv.weight")
                                           and k.startswith("model.enc.")) + ".weight"]
    except (StopIteration, KeyError):
        raise ConfigError("cannot infer the network config: no 'model.enc.<r>x<r>_conv.weight' key") from None
    model_channels = int(stem.shape[0])
    res_blocks: dict[int, set[int]] = {}
    swin_res: set[int] = set()
    for key in state:
        m = _LEVEL_KEY.match(key)
        if not m:
            continue
        res = int(m.group(2))
        if m.group(1) == "enc":
            res_blocks.setdefault(res, set())
            if m.group(4) is not None:
                res_blocks[res].add(int(m.group(4)))
                if ".swin_layer." in key:
                    swin_res.add(res)
    if not res_blocks:
        raise ConfigError("cannot infer the network config: no encoder blocks found")
    resolutions = sorted(res_blocks, reverse=True)
    img_resolution = resolutions[0]
    num_blocks = len(res_blocks[img_resolution])
    mults = []
    for res in resolutions:
        w = state[f"model.enc.{res}x{res}_block{num_blocks - 1}.conv1.weight"]
        mults.append(int(w.shape[0]) // model_channels)
    noise_ch = int(state["model.map_layer0.weight"].shape[1])
    emb_ch = int(state["model.map_layer0.weight"].shape[0])
    deepest = resolutions[-1]
    in0 = f"model.dec.{deepest}x{deepest}_in0.swin_layer."
    embed = state[in0 + "patch_embed.proj.weight"]
    fc1 = state[in0 + "blocks.0.mlp.fc1.weight"]
    # window: read it from an encoder Swin layer at the finest Swin level (not clamped if possible)
    table_shapes = [v.shape for k, v in state.items() if k.endswith("relative_position_bias_table")]
    heads = int(table_shapes[0][1])
    window = max((int(round(math.sqrt(s[0]))) + 1) // 2 for s in table_shapes)
    return NetworkConfig(
        img_resolution=img_resolution,
        model_channels=model_channels,
        channel_mult=tuple(mults),
        channel_mult_noise=noise_ch // model_channels,
        channel_mult_emb=emb_ch // model_channels,
        num_blocks=num_blocks,
        attn_resolutions=tuple(sorted(swin_res, reverse=True)),
        swin_embed_dim=int(embed.shape[0]),
        swin_num_heads=heads,
        swin_window_size=window,
        swin_mlp_ratio=int(fc1.shape[0]) / int(embed.shape[0]),
    )
