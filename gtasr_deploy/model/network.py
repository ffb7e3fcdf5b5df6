"""The network F: EDM's DDPM++ UNet ("SongUNet") with Swin layers as attention (SPEC §2).

Module and parameter names reproduce the official state-dict keys exactly, so the authors'
checkpoints load without key mapping. Shapes: x_t (N,3,4h,4w), lq (N,3,h,w), c_noise (N,)
→ F (N,3,4h,4w); h and w multiples of ``config.size_multiple``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import NetworkConfig

SKIP_SCALE = math.sqrt(0.5)


class GroupNorm(nn.Module):
    """UNet GroupNorm: groups = min(32, C // 4), eps 1e-6 (EDM). Kept a class of its own so that
    exporters can swap the lowering in one place."""

    def __init__(self, channels: int, *, groups: int | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_groups = groups if groups is not None else min(32, channels // 4)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.norm_io = None  # a shared_norm.NormIO while statistics are read or shared (two-pass tiling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_io is not None:
            return self.norm_io.normalize(self, x)
        # fp32 whatever the activation dtype (an fp32 island of reduced precision, SPEC §4); no-op in fp32
        y = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return y.to(x.dtype)


class Conv(nn.Module):
    """Conv with optional 2x resampling before it (EDM Conv2d with resample filter [1, 1]).

    Down = 2x2 average, up = nearest x2: exactly what EDM's [1,1] filter computes. The filter is
    kept as a buffer only because official state dicts carry it (``resample_filter``)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.up, self.down, self.kernel = up, down, kernel
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        if up or down:
            self.register_buffer("resample_filter", torch.full((1, 1, 2, 2), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            x = F.avg_pool2d(x, 2)
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), padding=self.kernel // 2)


class PatchConv(nn.Module):
    """1x1 conv stored under ``.proj`` (patch_embed / patch_unembed of the Swin layer)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def relative_position_index(window: int) -> torch.Tensor:
    """Standard Swin index (T, T), T = window²: into a ((2w-1)², heads) bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows with relative position bias."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) → (N, C, H, W); H, W multiples of the window."""
        n, c, h, w = x.shape
        ws, nh = self.window, self.heads
        t = ws * ws
        win = x.reshape(n, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1).reshape(-1, t, c)
        qkv = self.qkv(win).reshape(-1, t, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(t, t, nh).permute(2, 0, 1)
        # logits + bias + softmax in fp32 (an fp32 island of the fp16 path, SPEC §4)
        logits = (q @ k.transpose(-2, -1)).float() + bias.float()
        attn = logits.softmax(dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(-1, t, c)
        out = self.proj(out)
        out = out.reshape(n, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(n, c, h, w)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU (SPEC §2)


class SwinBlock(nn.Module):
    """One Swin block, depth 1: no shift, no mask. Norms are GroupNorm(32, eps 1e-5) on fp32."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(dim, groups=32, eps=1e-5)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = GroupNorm(dim, groups=32, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x.float()).to(x.dtype))
        return x + self.mlp(self.norm2(x.float()).to(x.dtype))


class SwinLayer(nn.Module):
    """1x1 embed C→E, one Swin block, 1x1 unembed E→C, 3x3 conv, residual to the layer input."""

    def __init__(self, channels: int, cfg: NetworkConfig, window: int) -> None:
        super().__init__()
        e = cfg.swin_embed_dim
        self.patch_embed = PatchConv(channels, e)
        self.blocks = nn.ModuleList([SwinBlock(e, cfg.swin_num_heads, window, cfg.swin_mlp_ratio)])
        self.patch_unembed = PatchConv(e, channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        return x + self.conv(self.patch_unembed(h))


class UNetBlock(nn.Module):
    """EDM UNet block, additive embedding, skip 1x1 conv when channels change or it resamples."""

    def __init__(self, cin: int, cout: int, emb: int, *, cfg: NetworkConfig, up: bool = False,
                 down: bool = False, swin_window: int | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = cin, cout, cfg.dropout
        self.norm0 = GroupNorm(cin)
        self.conv0 = Conv(cin, cout, 3, up=up, down=down)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = GroupNorm(cout)
        self.conv1 = Conv(cout, cout, 3)
        self.skip = Conv(cin, cout, 1, up=up, down=down) if (cin != cout or up or down) else None
        self.swin_layer = SwinLayer(cout, cfg, swin_window) if swin_window else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * SKIP_SCALE
        if self.swin_layer is not None:
            h = self.swin_layer(h) * SKIP_SCALE
        return h


def positional_embedding(c_noise: torch.Tensor, channels: int, max_positions: float = 1e4) -> torch.Tensor:
    """EDM positional embedding (endpoint=True), halves swapped to [sin, cos] as SongUNet does."""
    half = channels // 2
    freqs = torch.arange(half, dtype=torch.float32, device=c_noise.device) / (half - 1)
    freqs = (1.0 / max_positions) ** freqs
    x = c_noise.float()[:, None] * freqs[None, :]
    return torch.cat([x.sin(), x.cos()], dim=1)


class SongUNetSwin(nn.Module):
    """F(x_t, c_noise, lq) at HR size. Registered names produce the official state-dict keys."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        noise_ch, emb_ch = mc * cfg.channel_mult_noise, mc * cfg.channel_mult_emb
        self.noise_channels = noise_ch
        self.map_layer0 = nn.Linear(noise_ch, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)
        self.conv_up1 = nn.Conv2d(mc, mc, 3, padding=1)
        self.conv_up2 = nn.Conv2d(mc, mc, 3, padding=1)
        self.conv_last = nn.Conv2d(mc, 3, 3, padding=1)

        def window(level: int, decoder: bool) -> int | None:
            return cfg.swin_window(level, decoder=decoder) if cfg.has_swin(level) else None

        self.enc = nn.ModuleDict()
        cout, skips = 3 * cfg.scale**2 + 3, []
        for level, mult in enumerate(cfg.channel_mult):
            r = cfg.level_resolution(level)
            if level == 0:
                self.enc[f"{r}x{r}_conv"] = Conv(cout, mc, 3)
                cout = mc
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, emb_ch, cfg=cfg, down=True)
            skips.append(cout)
            for idx in range(cfg.num_blocks):
                cin, cout = cout, mc * mult
                self.enc[f"{r}x{r}_block{idx}"] = UNetBlock(cin, cout, emb_ch, cfg=cfg, swin_window=window(level, False))
                skips.append(cout)

        self.dec = nn.ModuleDict()
        deepest = cfg.num_levels - 1
        for level in reversed(range(cfg.num_levels)):
            r = cfg.level_resolution(level)
            if level == deepest:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(cout, cout, emb_ch, cfg=cfg,
                                                     swin_window=cfg.swin_window(level, decoder=True))
                self.dec[f"{r}x{r}_in1"] = UNetBlock(cout, cout, emb_ch, cfg=cfg)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(cout, cout, emb_ch, cfg=cfg, up=True)
            for idx in range(cfg.num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * cfg.channel_mult[level]
                last = idx == cfg.num_blocks
                self.dec[f"{r}x{r}_block{idx}"] = UNetBlock(cin, cout, emb_ch, cfg=cfg,
                                                            swin_window=window(level, True) if last else None)
        r0 = cfg.img_resolution
        self.dec[f"{r0}x{r0}_aux_norm"] = GroupNorm(cout)
        self.dec[f"{r0}x{r0}_aux_conv"] = Conv(cout, mc, 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Release initialisation (SPEC §2): EDM layers (stem, map layers, affine, conv0, skip)
        xavier_uniform, conv1 and aux_conv x1e-5, biases 0; Swin and head layers keep PyTorch
        defaults; relative-position tables trunc_normal(std 0.02)."""
        def xavier(weight: torch.Tensor, gain: float = 1.0) -> None:
            nn.init.xavier_uniform_(weight)
            weight.mul_(gain)

        for name, module in self.named_modules():
            if isinstance(module, Conv):
                small = name.endswith(".conv1") or name.endswith("_aux_conv")
                xavier(module.weight, 1e-5 if small else 1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Linear) and (name.startswith("map_layer") or name.endswith(".affine")):
                xavier(module.weight)
                module.bias.zero_()
            elif isinstance(module, WindowAttention):
                nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def forward(self, x_t: torch.Tensor, c_noise: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        emb = positional_embedding(c_noise, self.noise_channels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        x = torch.cat([F.pixel_unshuffle(x_t, self.cfg.scale), lq.to(x_t.dtype)], dim=1)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        tail = []
        for name, block in self.dec.items():
            if not isinstance(block, UNetBlock):
                tail.append(block)
                continue
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        aux_norm, aux_conv = tail
        x = aux_conv(F.silu(aux_norm(x)))
        x = F.leaky_relu(self.conv_up1(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        x = F.leaky_relu(self.conv_up2(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(x)
