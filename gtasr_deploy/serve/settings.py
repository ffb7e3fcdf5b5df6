"""The model settings of ``gtasr-upscale`` as one picklable value, shipped to Ray actors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..upscaler import Upscaler


@dataclass(frozen=True, kw_only=True)
class UpscalerSettings:
    """Everything that decides an output's bytes; the same values give the CLI's files.

    ``threads``: torch/ONNX Runtime CPU threads. CPU results depend (in the last float bit) on the
    thread count, so give the same value as the CLI run you compare with; None = all CPUs of
    this process (the CLI's default), which inside a Ray actor means its ``num_cpus``.
    """

    weights: str | None = None
    network_config: str | None = None
    param_key: str = "params_ema"
    backend: str = "auto"
    onnx: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    tile: int | None = None
    tile_overlap: int | None = None
    batch: int = 1
    shared_norm: bool | None = None
    threads: int | None = None

    def build(self, default_threads: int | None = None) -> Upscaler:
        """Open the Upscaler here (in the process that will run it)."""
        import torch

        threads = self.threads or default_threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        device = self.device
        if device == "auto":  # a Ray GPU actor sees only its own GPU(s) as cuda:0..
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return Upscaler(None if self.weights is None else Path(self.weights), network_config=self.network_config,
                        param_key=self.param_key, device=device, seed=self.seed, tile=self.tile,
                        tile_overlap=self.tile_overlap, batch=self.batch, backend=self.backend,
                        onnx=None if self.onnx is None else Path(self.onnx), precision=self.precision,
                        threads=self.threads, shared_norm=self.shared_norm)
