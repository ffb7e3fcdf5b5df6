"""Tile-shared GroupNorm statistics: the option that makes tiled output match the whole image.

The network is not tile-invariant: every GroupNorm normalises over the whole tile, so each tile
gets its own per-group mean and variance, i.e. its own colour/contrast offset (SPEC §3). Tiled
VAE decoders solve the same problem by sharing statistics; here in two passes, memory-bounded:

1. ``record``: run every tile; each GroupNorm accumulates its per-group E[x] and E[x²]
   (tiles weighted equally);
2. ``replay``: run every tile again; each GroupNorm normalises with the pooled mean/variance
   instead of the tile's own, so all tiles share one normalisation.

Pass 1 sees per-tile normalised inputs, so the pooled statistics approximate (not equal) the
whole-image ones; what matters for seams is that every tile uses the SAME statistics. Costs one
extra network pass per tile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .network import GroupNorm


class SharedGroupNormStats:
    """Forward hooks on every :class:`GroupNorm` of ``model``; ``record()`` then ``replay()``."""

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, GroupNorm)]
        self._sum: dict[int, torch.Tensor] = {}  # id(module) → (2, G) sums of E[x], E[x²] over samples
        self._count: dict[int, int] = {}

    def _stats(self, module: GroupNorm, x: torch.Tensor) -> torch.Tensor:
        g = x.float().reshape(x.shape[0], module.num_groups, -1)
        return torch.stack([g.mean(-1).sum(0), (g * g).mean(-1).sum(0)]).double()

    def _record_hook(self, module: GroupNorm, args, output):
        key = id(module)
        stats = self._stats(module, args[0])
        self._sum[key] = self._sum[key] + stats if key in self._sum else stats
        self._count[key] = self._count.get(key, 0) + args[0].shape[0]

    def _replay_hook(self, module: GroupNorm, args, output):
        key = id(module)
        if key not in self._sum:
            raise RuntimeError("shared GroupNorm statistics: replay() before any record() pass")
        x = args[0]
        mean, meansq = (self._sum[key] / self._count[key]).float().to(x.device)
        var = (meansq - mean * mean).clamp_min(0)
        n, c = x.shape[:2]
        g = x.float().reshape(n, module.num_groups, -1)
        g = (g - mean[None, :, None]) * torch.rsqrt(var + module.eps)[None, :, None]
        y = g.reshape(x.shape) * module.weight.float().reshape(1, c, 1, 1) + module.bias.float().reshape(1, c, 1, 1)
        return y.to(output.dtype)

    @contextlib.contextmanager
    def _hooked(self, hook) -> Iterator[None]:
        handles = [m.register_forward_hook(hook) for m in self.norms]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def reset(self) -> None:
        self._sum.clear()
        self._count.clear()

    def record(self) -> contextlib.AbstractContextManager:
        """Context: forward passes accumulate statistics (outputs are the usual per-tile ones)."""
        return self._hooked(self._record_hook)

    def replay(self) -> contextlib.AbstractContextManager:
        """Context: forward passes normalise with the pooled statistics."""
        return self._hooked(self._replay_hook)


def group_norm_reference(x: torch.Tensor, module: GroupNorm) -> torch.Tensor:
    """Plain GroupNorm of ``module`` (for tests)."""
    return F.group_norm(x.float(), module.num_groups, module.weight.float(), module.bias.float(), module.eps)
