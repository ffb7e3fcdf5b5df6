"""The "GTASR Upscale" node: gtasr-deploy's pipeline on a ComfyUI IMAGE batch.

IMAGE is a float32 tensor (B, H, W, C) in [0, 1], C = 3 (a 4th channel, alpha, is upscaled
bicubically and kept). The node takes the UPSCALE_MODEL that the built-in "Load Upscale Model"
gives for a GTASR file. ComfyUI's own modules are imported only inside the node's call and only
where present (device choice, progress bar, interrupt check), so this file imports nothing from
ComfyUI.
"""

from __future__ import annotations

import numpy as np
import torch

from gtasr_deploy.integrations.image_batch import batch_passes, upscale_batch
from gtasr_deploy.integrations.spandrel_arch import DEFAULT_PRECISION, DEFAULT_SEED, GTASRNetwork

WHOLE, TILES = "whole image", "tiles, shared statistics"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SEED_MAX = 0xFFFFFFFFFFFFFFFF  # torch.Generator.manual_seed accepts 64-bit seeds


def _comfy():
    """(model_management, utils) from the running ComfyUI, or (None, None) outside ComfyUI."""
    try:
        import comfy.model_management as model_management
        import comfy.utils as utils
    except ImportError:
        return None, None
    return model_management, utils


def _device(model_management) -> str:
    if model_management is not None:
        return str(model_management.get_torch_device())
    return "cuda" if torch.cuda.is_available() else "cpu"


class GTASRUpscale:
    """x4 with gtasr-deploy's pipeline: one noise draw per image (from ``seed``), whole image or
    tiles whose GroupNorm statistics are pooled over the image (as ``gtasr-upscale``'s default)."""

    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    DESCRIPTION = ("GTASR one-step diffusion x4 with gtasr-deploy's pipeline: seeded noise per image, whole image "
                   "or tiles with shared GroupNorm statistics (no per-tile seams), fp32/bf16/fp16 with fp32 islands.")

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        return {"required": {
            "upscale_model": ("UPSCALE_MODEL", {"tooltip": "A GTASR model from Load Upscale Model."}),
            "image": ("IMAGE",),
            "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": SEED_MAX,
                             "tooltip": "Seed of the noise x_K = up(lq) + eps (gtasr-upscale --seed)."}),
            "mode": ([TILES, WHOLE], {"default": TILES,
                                      "tooltip": "Whole image in one call (most memory), or tiles whose GroupNorm "
                                                 "statistics are pooled over the image (gtasr-upscale --norm shared)."}),
            "tile": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                             "tooltip": "Tile in LR px for the tiles mode (a multiple of the network's size rule); "
                                        "0 = auto (the network's default, smaller when memory is short)."}),
            "precision": (list(PRECISIONS), {"default": DEFAULT_PRECISION,
                                             "tooltip": "auto: fp16 on CUDA, bf16 on CPUs with native bf16, else "
                                                        "fp32 (gtasr-upscale --precision)."}),
        }}

    def upscale(self, upscale_model, image, seed, mode, tile, precision):
        network = getattr(upscale_model, "model", None)
        if not isinstance(network, GTASRNetwork):
            arch = getattr(getattr(upscale_model, "architecture", None), "name", type(upscale_model).__name__)
            raise ValueError(f"GTASR Upscale needs a GTASR model from Load Upscale Model, got {arch}; "
                             "use Upscale Image (using Model) for other architectures")
        model_management, utils = _comfy()
        if model_management is not None:
            model_management.throw_exception_if_processing_interrupted()
        upscaler = network.new_upscaler(_device(model_management), seed=seed, precision=precision,
                                        tile=0 if mode == WHOLE else (tile or "auto"))
        pixels = image.detach().float().cpu().numpy()
        bar = utils.ProgressBar(batch_passes(upscaler, pixels.shape)) if utils is not None else None

        def on_step(done: int, total: int) -> None:
            if bar is not None:
                bar.update_absolute(done, total)
            if model_management is not None:  # between tiles: Cancel stops the batch here
                model_management.throw_exception_if_processing_interrupted()

        try:
            out = upscale_batch(upscaler, pixels, on_step=on_step)
        finally:
            upscaler.close()
            network.to("cpu")  # as the built-in node does: weights leave the GPU between runs
        return (torch.from_numpy(np.ascontiguousarray(out)),)


NODE_CLASS_MAPPINGS = {"GTASRUpscale": GTASRUpscale}
NODE_DISPLAY_NAME_MAPPINGS = {"GTASRUpscale": "GTASR Upscale (x4, seeded, shared-statistics tiles)"}
