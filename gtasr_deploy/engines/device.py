"""Devices: ``"auto"`` resolved in one place, and the one question asked of torch about CUDA.

``"auto"`` means a CUDA GPU when torch sees one, else the CPU; every command that takes
``--device auto`` (upscale, bench, serve, training's ``run.device``) resolves it here.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA GPU (``torch.cuda.is_available()``)."""
    return torch.cuda.is_available()


def resolve_device(device: str, *, cuda: str = "cuda") -> str:
    """``device`` unchanged, or for ``"auto"``: ``cuda`` when a CUDA GPU is visible, else ``"cpu"``."""
    if device != AUTO:
        return device
    return cuda if cuda_available() else "cpu"


def wants_cuda(device: str) -> bool:
    """Whether ``device`` runs on CUDA once resolved: "cuda", "cuda:N", or "auto" with a GPU visible."""
    return resolve_device(device).startswith("cuda")
