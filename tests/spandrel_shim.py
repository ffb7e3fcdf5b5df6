"""Import spandrel next to this project's CPU torch (test-only; never in the package).

PyPI's torchvision for torch 2.13 is a CUDA build: its C++ ops do not load next to the CPU torch,
and ``import torchvision`` (which spandrel does) then fails registering fake kernels for
``torchvision::nms``. When the ops library does not load, the two op schemas it would have
defined (``nms``, ``qnms``) are declared here, with no kernels: nothing here calls them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_LIBRARY = None  # a torch.library.Library drops its definitions when collected: keep it


def _declare_torchvision_ops() -> None:
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _LIBRARY is not None:
        return
    for lib in Path(spec.origin).parent.glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
            return  # a torchvision whose ops load: nothing to declare
        except (OSError, RuntimeError):
            break
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")


def import_spandrel():
    """spandrel with the GTASR architecture registered; skips (with the install line) without it."""
    if importlib.util.find_spec("spandrel") is None:  # importorskip would import it before the shim
        pytest.skip("spandrel is not installed (scripts/test.sh installs spandrel==0.4.2)", allow_module_level=True)
    _declare_torchvision_ops()
    import spandrel

    from gtasr_deploy.integrations.spandrel_arch import register

    register()
    return spandrel
