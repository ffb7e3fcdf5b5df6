"""The forward process Q and the discrete trajectory grid, shared by training, inference and tests.

    a_i = s_i = (i/K)^p,  i = 0..K                      (residual weight = sigma)
    Q(x0, y0, i, eps) = x0 + a_i·(up(y0) − x0) + s_i·eps    (paper Eq. 1)

``up`` is bicubic x4 as torch ``interpolate(mode="bicubic", align_corners=False)``: a = −0.75,
clamped borders, no antialias (SPEC §1). With a_K = s_K = 1, x_K = up(y0) + eps: where one-step
inference starts (:func:`one_step_start`), evaluated at σ = 1 (``conventions.SIGMA_ONE``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .conventions import SCALE


def up(lq: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic upsampling of (N,3,h,w) → (N,3,sh,sw), torch semantics, no clamp."""
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False)


def grid_sigma(i: int | torch.Tensor, k: int, p: float) -> torch.Tensor:
    """s_i = a_i = (i/K)^p as fp32 tensor (works for int or tensor indices)."""
    i = torch.as_tensor(i, dtype=torch.float64)
    return ((i / k) ** p).float()


def q_sample(x0: torch.Tensor, up_lq: torch.Tensor, sigma: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
    """Q with a = s = sigma: x0 + sigma·(up(y0) − x0) + sigma·eps. sigma scalar or (N,)."""
    s = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).reshape(-1, 1, 1, 1)
    return x0 + s * (up_lq - x0) + s * eps


def one_step_start(lq: torch.Tensor, *, eps: torch.Tensor | None = None, seed: int | None = None,
                   scale: int = SCALE) -> torch.Tensor:
    """x_K = up(lq) + eps: Q at i = K (a_K = s_K = 1), the input of one-step inference at σ = 1.

    ``lq`` (N, 3, h, w) in [-1, 1]. ``eps``: the unit noise, (N, 3, scale·h, scale·w); None draws it
    from ``seed`` with :func:`unit_noise` on the CPU. Added in place to the fresh ``up(lq)``."""
    x_k = up(lq, scale)
    x_k += unit_noise(tuple(x_k.shape), seed) if eps is None else eps
    return x_k


def num_intervals(step: int, total_steps: int, k_start: int, k_end: int) -> int:
    """K at training step k: K(k) = max(s0 − ⌊k / ⌊K_tot/(s0−s1+1)⌋⌋, s1) (SPEC §5)."""
    if k_start == k_end:
        return k_start
    period = max(total_steps // (k_start - k_end + 1), 1)
    return max(k_start - step // period, k_end)


def unit_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """eps ~ N(0, I) drawn on the CPU with a seeded generator (SPEC §1): every backend gets these values."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32)
