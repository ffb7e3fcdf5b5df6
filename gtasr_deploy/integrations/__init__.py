"""GTASR where users already work (each module needs its own optional extra, imported only there).

* :mod:`.spandrel_arch`: a spandrel architecture (extra ``spandrel``), so spandrel, chaiNNer and
  ComfyUI's built-in upscale-model nodes load GTASR weights.
* :mod:`.image_batch`: this package's pipeline on a (B, H, W, C) float batch in [0, 1] (ComfyUI's
  IMAGE), with progress and interrupt hooks; no third-party import.
* :mod:`.triton_repo`: a Triton Inference Server model repository for an exported graph.
"""
