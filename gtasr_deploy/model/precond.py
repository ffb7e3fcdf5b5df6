"""The denoiser D: consistency preconditioning wrapped around an unchanged backbone F (SPEC §1).

    c_skip(s)  = σd² / ((s/0.1)² + σd²)
    c_out(s)   = (s/0.1) / sqrt((s/0.1)² + σd²)
    c_noise(s) = ln(s + 0.002) / 4                  (c_in = 1: x is not rescaled)
    D(x, s, lq) = c_skip(s)·x + c_out(s)·F(x, c_noise(s), lq)

with σd = sigma_data = 0.5 as released. D(x, 0, lq) == x exactly for any weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import NetworkConfig
from .network import GroupNorm, SongUNetSwin, WindowAttention

SIGMA_UNIT = 0.1  # the release divides sigma by 0.1 inside c_skip / c_out
C_NOISE_OFFSET = 0.002


def preconditioning(sigma: torch.Tensor, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_noise) for sigma of shape (N,), computed in fp32."""
    s = sigma.float()
    u = s / SIGMA_UNIT
    denom = u * u + sigma_data**2
    c_skip = sigma_data**2 / denom
    c_out = u / denom.sqrt()
    c_noise = torch.log(s + C_NOISE_OFFSET) / 4
    return c_skip, c_out, c_noise


class Denoiser(nn.Module):
    """D(x_t, sigma, lq) → estimate of x0 (N,3,4h,4w), fp32 output.

    Called as ``model(x_t, sigma, lq)`` (the authors' order) or with keywords. ``sigma`` may be a
    Python float, a 0-d tensor, or shape (N,)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.sigma_data = config.sigma_data
        self.model = SongUNetSwin(config)
        self.compute_dtype = torch.float32  # the backbone's dtype; see reduced_precision()

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor | float, lq: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device).reshape(-1).expand(n)
        c_skip, c_out, c_noise = preconditioning(sigma, self.sigma_data)
        dtype = self.compute_dtype
        f = self.model(x_t.to(dtype), c_noise, lq.to(dtype)).float()
        return c_skip[:, None, None, None] * x_t.float() + c_out[:, None, None, None] * f


def reduced_precision(denoiser: Denoiser, dtype: torch.dtype) -> Denoiser:
    """A copy of D whose backbone runs in ``dtype`` (fp16 or bf16) with fp32 islands (SPEC §4).

    Islands, as in the fp16 ONNX graph: c_skip/c_out/c_noise and the final combination (in
    :class:`Denoiser`), the positional embedding, the embedding MLP and every block's embedding
    projection (``affine``), every GroupNorm with its affine (fp32 inside ``GroupNorm.forward``),
    the attention bias + softmax (``WindowAttention`` casts the logits to fp32). I/O stays fp32."""
    if dtype == torch.float32:
        return denoiser
    out = copy.deepcopy(denoiser)
    backbone = out.model.to(dtype)
    backbone.map_layer0.float()
    backbone.map_layer1.float()
    for name, module in backbone.named_modules():
        if isinstance(module, GroupNorm) or name.endswith(".affine"):
            module.float()
        elif isinstance(module, WindowAttention):
            module.relative_position_bias_table.data = module.relative_position_bias_table.data.float()
    out.compute_dtype = dtype
    return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
