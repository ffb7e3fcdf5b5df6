"""gtasr-deploy: GTASR one-step diffusion super-resolution (x4) from paper to production.

Public API::

    from gtasr_deploy import build_model, load_model, Upscaler, UpscaleOptions
"""

from .version import __version__

__all__ = ["build_model", "load_model", "save_model", "Upscaler", "UpscaleOptions", "__version__"]


def __getattr__(name):  # lazy: `import gtasr_deploy` stays cheap for the CLI's --help
    if name in ("build_model", "load_model", "save_model"):
        from . import model

        return getattr(model, name)
    if name == "Upscaler":
        from .upscaler import Upscaler

        return Upscaler
    if name == "UpscaleOptions":
        from .inference.options import UpscaleOptions

        return UpscaleOptions
    raise AttributeError(f"module 'gtasr_deploy' has no attribute {name!r}")
