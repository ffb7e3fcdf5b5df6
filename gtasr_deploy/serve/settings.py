"""The model settings of ``gtasr-upscale`` as one picklable value, shipped to Ray actors.

Built from gtasr-upscale's own option names and defaults (read from its command), so a service
or a cluster run with no options computes what ``gtasr-upscale`` with no options computes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import InputError
from ..cli.upscale import main
from ..upscaler import Upscaler
from ..engines.device import resolve_device

# gtasr-upscale parameter name -> Upscaler keyword (device is resolved where the model runs).
_UPSCALER_ARGS = {"weights": "weights", "network_config": "network_config", "param_key": "param_key",
                  "backend": "backend", "onnx_path": "onnx", "precision": "precision", "seed": "seed",
                  "tile": "tile", "tile_overlap": "tile_overlap", "batch": "batch", "norm": "norm",
                  "shared_norm": "shared_norm", "threads": "threads"}


def model_option_names() -> list[str]:
    """gtasr-upscale's model options that exist in this version, in its order, plus device."""

    return [p.name for p in main.params if p.name in _UPSCALER_ARGS or p.name == "device"]


@dataclass(frozen=True)
class UpscalerSettings:
    """Upscaler keywords plus the device. CPU results depend (in the last float bit) on the thread
    count: give ``threads`` the value of the CLI run you compare with; None = the CPUs this
    process may use (the CLI's default), which in a Ray actor is its ``num_cpus``."""

    upscaler_args: Mapping = field(default_factory=dict)
    device: str = "auto"

    @classmethod
    def from_cli(cls, *args: str, **values) -> UpscalerSettings:
        """From gtasr-upscale's own parser: ``args`` as typed on its command line (``"--tile", "64"``),
        then ``values`` (already parsed, by its parameter names); everything else its defaults."""
        import click


        try:  # dummy INPUT/OUTPUT: only the model options are used
            parsed = main.make_context("gtasr-upscale", [*args, "IN", "OUT"]).params
        except click.ClickException as exc:
            raise InputError(exc.format_message()) from None
        merged = {name: value for name, value in parsed.items() if name in _UPSCALER_ARGS or name == "device"}
        unknown = set(values) - set(merged)
        if unknown:
            raise TypeError(f"not gtasr-upscale model options: {sorted(unknown)}")
        merged.update(values)
        device = merged.pop("device", "auto")
        args_out = {_UPSCALER_ARGS[name]: value for name, value in merged.items()}
        if isinstance(args_out.get("tile"), str):
            args_out["tile"] = _tile(args_out["tile"])
        return cls(upscaler_args=MappingProxyType(args_out), device=device)

    @property
    def threads(self) -> int | None:
        return self.upscaler_args.get("threads")

    def __reduce__(self):  # MappingProxyType does not pickle; Ray ships settings to its workers
        return (_rebuild, (dict(self.upscaler_args), self.device))

    def build(self, default_threads: int | None = None):
        """Open the Upscaler here (in the process that will run it)."""
        import torch


        torch.set_num_threads(self.threads or default_threads or len(os.sched_getaffinity(0)))
        device = resolve_device(self.device)  # a Ray GPU actor sees only its own GPU(s), as cuda:0..
        return Upscaler(**self.upscaler_args, device=device)


def _rebuild(args: dict, device: str) -> UpscalerSettings:
    return UpscalerSettings(upscaler_args=MappingProxyType(args), device=device)


def _tile(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--tile {text!r}: expected a whole number of LR px, 0 (whole image) or auto") from None
