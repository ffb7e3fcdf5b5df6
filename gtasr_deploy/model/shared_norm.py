"""GroupNorm statistics as inputs and outputs of D: what makes tiled output follow the whole image.

The network is not tile-invariant: every GroupNorm normalises over the whole tile, so each tile
gets its own per-group mean and variance, i.e. its own colour/contrast offset (SPEC §3). Tiled
VAE decoders solve the same problem by sharing statistics; the pipeline does it in two passes:

1. every tile runs with its own statistics (plain GroupNorm) and reports them per group;
2. the pipeline pools them over all tiles of the image (host, float64), and every tile runs
   again normalised with the pooled mean/variance, so all tiles share one normalisation.

The same :class:`NormIO` serves the torch engine and the exported graph (where the pooled
statistics are a graph input and the per-tile ones a graph output), so every backend computes
the same thing. Layout: ``S`` = the total number of groups over every GroupNorm, in module order;
per-tile statistics are (N, 2, S) = (mean, variance) per sample; pooled ones (2, S).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .network import GroupNorm


class NormIO:
    """Installed on every :class:`GroupNorm` of ``model`` (``module.norm_io``) while active.

    ``shared`` (2, S) fp32 pooled (mean, variance); ``mix`` (1,) fp32 in [0, 1] blends the tile's own
    statistics (0) with the shared ones (1) — a graph input so that one exported graph runs both
    passes. Computations are fp32 whatever the activation dtype (an fp32 island)."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, GroupNorm)]
        self.offsets: dict[int, int] = {}
        offset = 0
        for m in self.norms:
            self.offsets[id(m)] = offset
            offset += m.num_groups
        self.size = offset
        self._shared: torch.Tensor | None = None
        self._mix: torch.Tensor | None = None
        self._seen: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[NormIO]:
        for m in self.norms:
            m.norm_io = self
        try:
            yield self
        finally:
            for m in self.norms:
                m.norm_io = None

    @contextlib.contextmanager
    def call(self, shared: torch.Tensor | None = None, mix: torch.Tensor | None = None) -> Iterator[NormIO]:
        """One forward pass: with ``shared`` the norms use it (blended by ``mix`` when given)."""
        if shared is not None and tuple(shared.shape) != (2, self.size):
            raise ValueError(f"norm statistics have shape {tuple(shared.shape)}, expected (2, {self.size})")
        self._shared, self._mix, self._seen = shared, mix, {}
        try:
            yield self
        finally:
            self._shared = self._mix = None

    def normalize(self, module: GroupNorm, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        groups = module.num_groups
        g = x.float().reshape(n, groups, -1)
        mean = g.mean(-1)
        var = (g - mean[..., None]).square().mean(-1)  # two-pass: no E[x²] − E[x]² cancellation
        offset = self.offsets[id(module)]
        self._seen[offset] = torch.stack([mean, var], 1)
        if self._shared is not None:
            s_mean, s_var = self._shared[0, offset:offset + groups], self._shared[1, offset:offset + groups]
            if self._mix is None:
                mean, var = s_mean.expand_as(mean), s_var.expand_as(var)
            else:
                mean, var = mean + self._mix * (s_mean - mean), var + self._mix * (s_var - var)
        y = (g - mean[..., None]) * torch.rsqrt(var[..., None] + module.eps)
        y = y.reshape(x.shape) * module.weight.float().reshape(1, c, 1, 1) + module.bias.float().reshape(1, c, 1, 1)
        return y.to(x.dtype)

    def tile_statistics(self) -> torch.Tensor:
        """(N, 2, S) fp32: every GroupNorm's per-sample (mean, variance) of the last pass."""
        if len(self._seen) != len(self.norms):
            raise RuntimeError(f"NormIO: {len(self._seen)} of {len(self.norms)} GroupNorms ran in this pass")
        return torch.cat([self._seen[k] for k in sorted(self._seen)], dim=2)


def pool_statistics(tile_stats: np.ndarray) -> np.ndarray:
    """(T, 2, S) per-tile (mean, variance) → (2, S) float32 pooled over tiles, tiles weighted equally.

    var_pool = E[var_i + mean_i²] − mean_pool², in float64 (law of total variance)."""
    stats = np.asarray(tile_stats, dtype=np.float64)
    mean = stats[:, 0].mean(0)
    var = np.maximum((stats[:, 1] + stats[:, 0] ** 2).mean(0) - mean**2, 0.0)
    return np.stack([mean, var]).astype(np.float32)
