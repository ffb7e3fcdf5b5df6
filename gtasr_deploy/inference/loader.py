"""The one loader of D for inference, export and benchmarks: weights | preset | config.

    load_denoiser()                                  # the embedded demo weights
    load_denoiser("GTASR_final_phase.pth")           # official .pth (params_ema) or our .safetensors
    load_denoiser("gtasr-final")                     # a name fetched with gtasr-weights
    load_denoiser(preset="paper", random_ok=True)    # seeded random weights of a preset (benchmarks)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..hashing import file_sha256
from ..model import PRESETS, build_model, load_model
from ..model.config import NetworkConfig
from ..model.precond import Denoiser
from ..weights import EMBEDDED_WEIGHTS
from ..weights.registry import resolve_weights

EMBEDDED_LABEL = "embedded demo weights — a small smoke-test model, not the paper's quality; see gtasr-weights"


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """D in eval mode plus where it came from (for run headers, sidecars and reports)."""

    model: Denoiser
    name: str  # file stem, preset or config name: used to name exported graphs
    preset: str | None  # the preset whose config equals the model's, None for custom networks
    weights_sha256: str | None  # None for random weights
    label: str  # one line for a run header

    @property
    def random(self) -> bool:
        return self.weights_sha256 is None


def preset_name(config: NetworkConfig) -> str | None:
    """The preset whose config equals ``config`` (None for custom networks)."""
    return next((name for name, cfg in PRESETS.items() if cfg == config), None)


def load_denoiser(weights: str | Path | None = None, *, network_config=None, preset: str | None = None,
                  param_key: str = "params_ema", device: str = "cpu", random_ok: bool = False,
                  seed: int = 0) -> LoadedModel:
    """D from ``weights``; with none, the embedded demo weights — or, when ``random_ok`` and a
    ``preset``/``network_config`` is given, freshly initialised weights (seeded) of that network."""
    import torch

    if preset is not None and network_config is not None:
        raise ConfigError(f"preset {preset!r} and network config {network_config!r} both given; pass one of them")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    config = network_config if network_config is not None else preset
    if weights is None and not (random_ok and config is not None):
        if not EMBEDDED_WEIGHTS.is_file():
            raise ConfigError("no weights given and no embedded default weights in this install; pass --weights PATH")
        weights = EMBEDDED_WEIGHTS
    if weights is not None:
        weights = resolve_weights(weights)
        model = load_model(weights, network_config=config, param_key=param_key, device=device)
        label = EMBEDDED_LABEL if weights.resolve() == EMBEDDED_WEIGHTS else f"weights {weights}"
        return LoadedModel(model=model, name=weights.stem, preset=preset or preset_name(model.config),
                           weights_sha256=file_sha256(weights), label=label)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config).to(device)
    name = Path(str(network_config)).stem if network_config is not None else str(preset)
    return LoadedModel(model=model, name=name, preset=preset or preset_name(model.config), weights_sha256=None,
                       label=f"RANDOM weights of the {name!r} network (seed {seed}): noise, for benchmarks only")
