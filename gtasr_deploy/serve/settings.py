"""The model options of a service or a cluster run, and the one way a replica or a Ray actor opens
its Upscaler.

Options come as an :class:`~gtasr_deploy.inference.options.UpscaleOptions`: from gtasr-serve's
flags (the same flags as gtasr-upscale, declared once in ``cli/_options.py``), or from a mapping
(request JSON, a TOML table, keyword arguments) through :func:`serve_options`, which starts from
gtasr-upscale's defaults — so a service or a cluster run with no options computes what
``gtasr-upscale`` with no options computes. Unknown keys are refused with the list of valid ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..inference.options import UpscaleOptions
from ..upscaler import Upscaler
from ..engines.device import resolve_device

SERVE_DEFAULTS = {"device": "auto"}  # gtasr-upscale's defaults where they differ from the Python API's


def serve_options(values: Mapping[str, Any] | None = None, **overrides: Any) -> UpscaleOptions:
    """Options from ``values`` (e.g. parsed request JSON or TOML), then ``overrides``; the rest gtasr-upscale's
    defaults. CPU results depend (in the last float bit) on the thread count: give ``threads`` the
    value of the CLI run you compare with; None = the CPUs the process may use (the CLI's default),
    which in a Ray actor is its ``num_cpus``."""
    return UpscaleOptions.from_mapping({**SERVE_DEFAULTS, **(values or {})}, **overrides)


def open_upscaler(options: UpscaleOptions, default_threads: int | None = None, log=None) -> Upscaler:
    """Open the Upscaler here, in the process that will run it: torch's threads set, ``auto`` device
    resolved (a Ray GPU actor sees only its own GPU(s), as cuda:0..)."""
    import torch

    torch.set_num_threads(options.threads or default_threads or len(os.sched_getaffinity(0)))
    device = resolve_device(options.device)  # a Ray GPU actor sees only its own GPU(s), as cuda:0..
    return Upscaler.from_options(replace(options, device=device), log=log)


@dataclass(frozen=True, kw_only=True)
class ServiceOptions:
    """Request handling of one replica (the model's options are an :class:`UpscaleOptions`)."""

    max_upload_bytes: int = 32 * 2**20
    max_pixels: int | None = 4_000_000  # x4 output of 4 MP is 64 MP: ~0.8 GB of float32 on the host
    max_batch_size: int = 8  # tiles per merged engine call
    batch_wait_s: float = 0.01  # how long the first tile waits for company
    max_ongoing_requests: int = 8  # each holds its image and x4 result in host memory
