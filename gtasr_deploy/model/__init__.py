"""GTASR model: network config, the network F, the denoiser D, checkpoint I/O."""

from .checkpoint import build_model, load_model, save_model
from .config import PRESETS, NetworkConfig, from_authors, infer_config, resolve_config
from .precond import Denoiser, count_parameters, preconditioning

__all__ = [
    "PRESETS", "NetworkConfig", "Denoiser", "build_model", "load_model", "save_model",
    "from_authors", "infer_config", "resolve_config", "count_parameters", "preconditioning",
]
