"""ComfyUI custom nodes for GTASR x4 super-resolution (needs ``gtasr-deploy[spandrel]`` in ComfyUI's Python).

Loading this folder registers the GTASR spandrel architecture, so ComfyUI's built-in "Load Upscale
Model" and "Upscale Image (using Model)" nodes take GTASR weights (the authors' ``.pth`` or a
``gtasr-deploy`` ``.safetensors`` in ``models/upscale_models``), and adds "GTASR Upscale", which
runs gtasr-deploy's own pipeline (seed, whole image or tiles with shared GroupNorm statistics,
precision) on an IMAGE batch.
"""

from gtasr_deploy.integrations.spandrel_arch import register

from .gtasr_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register()  # ComfyUI imports this package once at start-up: that is when the architecture must exist

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
