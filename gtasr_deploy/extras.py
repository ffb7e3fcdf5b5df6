"""Optional packages: import one, or fail in one line that names the pip extra to install.

Each optional third-party package belongs to an extra of pyproject.toml; a command that needs one
checks for it before any work (and before creating an output folder), so a missing package is
one line, not a traceback halfway through.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendUnavailableError

# module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA_OF = {
    "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "onnx", "openvino": "openvino",
    "av": "video", "ray": "serve", "fastapi": "serve", "starlette": "serve", "matplotlib": "bench",
    "scipy": "eval", "lpips": "lpips", "pyiqa": "iqa", "tensorrt": "tensorrt",
}


def install_hint(module: str) -> str:
    return f"pip install 'gtasr-deploy[{EXTRA_OF[module.split('.')[0]]}]'"


def missing_message(module: str, needed_for: str) -> str:
    return f"{needed_for} needs the '{module}' package, which is not installed: {install_hint(module)}"


def require(module: str, needed_for: str) -> ModuleType:
    """``import module``, or BackendUnavailableError: '<needed_for> needs ...: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendUnavailableError(missing_message(module, needed_for)) from err


def require_all(modules: tuple[str, ...], needed_for: str) -> None:
    for module in modules:
        require(module, needed_for)
