"""The inference layer: one loader, one pipeline, memory-aware tiles (CLI, API, bench and eval use it).

    cli / bench / eval / serve ──► upscaler (facade) ──► inference.pipeline ──► engines ──► model
                                                         inference.loader   ──► model
"""

from .loader import LoadedModel, load_denoiser
from .pipeline import Pipeline, TilePolicy, default_overlap

__all__ = ["LoadedModel", "Pipeline", "TilePolicy", "default_overlap", "load_denoiser"]
