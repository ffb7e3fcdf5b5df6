"""Real-ESRGAN second-order degradation that makes the training LR from a GT crop (SPEC §5).

Pipeline (batch in, batch out; GT (N,3,H,W) in [0,1] -> LR (N,3,H/4,W/4) on the 8-bit grid):

1. first order: blur (per-image kernel) -> resize by a factor -> noise -> clamp -> JPEG
2. second order, applied with p=0.5: blur (p=0.8) -> resize to int(H/4·factor) -> noise
3. final, order by coin: [resize to H/4 + sinc] -> JPEG, or JPEG -> [resize to H/4 + sinc]
4. clamp and round to 8 bit.

Noise clamps to [0,1]; every JPEG clamps and rounds its input to 8 bit. The final JPEG draws its
quality from ``second.jpeg_quality_range`` (the release's ``jpeg_range2``), as released.
Randomness granularity as released: kernels per image; noise strength, gray choice and JPEG
quality per sample; resize direction/factor/mode, noise type, whether the second order and its
blur run, and the final order per batch.

Every random draw, noise fields included, comes from one CPU ``torch.Generator`` passed in, so a
seed gives the same draws on CPU and CUDA. ``sample_plan`` draws every decision and kernel up
front; ``apply_plan`` then draws only the noise fields. Splitting them lets tests and logs see
the decisions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any, Mapping

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..model.conventions import SCALE
from .config_types import checked_values
from .kernels import (
    BlurConfig,
    check_cutoff,
    check_kernel_sizes,
    check_prob,
    check_range,
    rand_index,
    rand_uniform,
    random_blur_kernel,
    random_final_sinc_kernel,
)

RESIZE_MODES = ("area", "bilinear", "bicubic")
_LUMA = (0.2989, 0.587, 0.114)  # Real-ESRGAN's gray noise uses torchvision's rgb_to_grayscale weights


# --- configuration -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class OrderConfig:
    """One degradation order. Defaults are the first order of SPEC §5.

    ``resize_probs`` are (up, down, keep); up draws the factor from U[1, hi], down from U[lo, 1].
    Gaussian sigma is in 8-bit levels (divided by 255). ``blur_prob`` is 1 for the first order.
    """

    blur: BlurConfig = BlurConfig()
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    gaussian_noise_prob: float = 0.5
    gaussian_sigma_range_8bit: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality_range: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "gaussian_noise_prob", "gray_noise_prob"):
            check_prob(name, getattr(self, name))
        for name in ("resize_range", "gaussian_sigma_range_8bit", "poisson_scale_range", "jpeg_quality_range"):
            check_range(name, getattr(self, name))
        if len(self.resize_probs) != 3 or min(self.resize_probs) < 0 or abs(sum(self.resize_probs) - 1) > 1e-6:
            raise ConfigError(
                f"degradation config: resize_probs is {self.resize_probs}; expected (up, down, keep) summing to 1"
            )
        if not self.resize_range[0] > 0 or not self.resize_range[0] <= 1 <= self.resize_range[1]:
            raise ConfigError(f"degradation config: resize_range is {self.resize_range}; expected 0 < lo <= 1 <= hi")
        _check_modes(self.resize_modes)
        lo, hi = self.jpeg_quality_range
        if int(lo) != lo or int(hi) != hi or lo < 1 or hi > 100:
            raise ConfigError(
                f"degradation config: jpeg_quality_range is {self.jpeg_quality_range}; expected integers in 1..100"
            )


def _check_modes(modes: tuple[str, ...]) -> None:
    if not modes or any(m not in RESIZE_MODES for m in modes):
        raise ConfigError(f"degradation config: resize modes {modes}; expected a non-empty subset of {RESIZE_MODES}")


FIRST_ORDER = OrderConfig()
SECOND_ORDER = OrderConfig(
    blur=BlurConfig(kernel_sizes=tuple(range(3, 14, 2)), pad_to=15, sigma_range=(0.2, 1.5)),
    blur_prob=0.8,
    resize_probs=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2),
    gaussian_sigma_range_8bit=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5),
)


@dataclass(frozen=True, kw_only=True)
class DegradationConfig:
    """Every number of the SPEC §5 degradation table; the defaults are the SPEC values."""

    first: OrderConfig = FIRST_ORDER
    second: OrderConfig = SECOND_ORDER
    second_order_prob: float = 0.5
    final_resize_first_prob: float = 0.5  # p of [resize + sinc] -> JPEG (else JPEG -> [resize + sinc])
    final_resize_modes: tuple[str, ...] = RESIZE_MODES
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = tuple(range(3, 14, 2))
    final_sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    final_sinc_pad_to: int = 15

    def __post_init__(self) -> None:
        for name in ("second_order_prob", "final_resize_first_prob", "final_sinc_prob"):
            check_prob(name, getattr(self, name))
        object.__setattr__(self, "final_sinc_sizes", tuple(int(k) for k in self.final_sinc_sizes))
        check_kernel_sizes("final sinc", self.final_sinc_sizes, self.final_sinc_pad_to)
        check_range("final_sinc_cutoff_range", self.final_sinc_cutoff_range)
        check_cutoff("final_sinc_cutoff_range", self.final_sinc_cutoff_range)
        _check_modes(self.final_resize_modes)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists), suitable for TOML/JSON."""
        return _lists(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DegradationConfig":
        """Override the defaults with ``data`` (nested tables allowed, partial ones too).

        Raises ConfigError naming any unknown key and listing the valid ones.
        """
        return _replace_from(cls(), data, "degradation")


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    return value


def _replace_from(base: Any, data: Mapping[str, Any], where: str) -> Any:
    # Partial sub-tables override the parent's default (e.g. SECOND_ORDER), not the class default.
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}; expected a table of {type(base).__name__} keys")
    valid = {f.name for f in fields(base)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{where} config: unknown keys {unknown}; valid keys: {sorted(valid)}")
    changes = {}
    for name, value in data.items():
        current = getattr(base, name)
        if is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{name}: got {value!r}; expected a table of {type(current).__name__} keys")
            changes[name] = _replace_from(current, value, f"{where}.{name}")
        else:
            changes.update(checked_values(type(base), {name: value}, where))
    return replace(base, **changes)


# --- the random plan ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NoisePlan:
    """Noise of one order: type per batch; ``strength`` (N,) float64 is sigma in [0,1] units for
    Gaussian or the scale for Poisson, per sample; ``gray`` (N,) bool per sample."""

    gaussian: bool
    strength: torch.Tensor
    gray: torch.Tensor


@dataclass(frozen=True)
class OrderPlan:
    """One order: ``kernels`` (N,k,k) float64 CPU per image; the rest per batch."""

    kernels: torch.Tensor
    blur: bool
    resize_factor: float
    resize_mode: str
    noise: NoisePlan


@dataclass(frozen=True)
class DegradationPlan:
    """Every random decision of one batch except the noise fields. Qualities: (N,) int64."""

    first: OrderPlan
    first_jpeg_quality: torch.Tensor
    second: OrderPlan | None
    final_kernels: torch.Tensor
    final_resize_first: bool
    final_resize_mode: str
    final_jpeg_quality: torch.Tensor


def _coin(generator: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < p


def _per_sample(generator: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _pick(generator: torch.Generator, options: tuple[str, ...]) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


def _jpeg_qualities(generator: torch.Generator, n: int, quality_range: tuple[int, int]) -> torch.Tensor:
    # Integer qualities, uniform over lo..hi inclusive (libjpeg takes integers; the release's
    # differentiable JPEG took U[lo, hi] as a float).
    lo, hi = int(quality_range[0]), int(quality_range[1])
    return torch.randint(lo, hi + 1, (n,), generator=generator)


def _sample_order(generator: torch.Generator, n: int, cfg: OrderConfig, kernels: torch.Tensor) -> OrderPlan:
    blur = _coin(generator, cfg.blur_prob)
    direction = rand_index(generator, cfg.resize_probs)
    lo, hi = cfg.resize_range
    if direction == 0:
        factor = rand_uniform(generator, 1.0, hi)
    elif direction == 1:
        factor = rand_uniform(generator, lo, 1.0)
    else:
        factor = 1.0
    mode = _pick(generator, cfg.resize_modes)
    gaussian = _coin(generator, cfg.gaussian_noise_prob)
    if gaussian:
        strength = _per_sample(generator, n, *cfg.gaussian_sigma_range_8bit) / 255.0
    else:
        strength = _per_sample(generator, n, *cfg.poisson_scale_range)
    gray = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.gray_noise_prob
    return OrderPlan(kernels, blur, factor, mode, NoisePlan(gaussian, strength, gray))


def sample_plan(
    generator: torch.Generator, batch: int, config: DegradationConfig = DegradationConfig()
) -> DegradationPlan:
    """Draw every decision and kernel for a batch of ``batch`` images from the CPU ``generator``."""
    cfg = config
    # Kernels per image first, as the released dataset draws them with each image.
    k1, k2, k_final = [], [], []
    for _ in range(batch):
        k1.append(random_blur_kernel(generator, cfg.first.blur))
        k2.append(random_blur_kernel(generator, cfg.second.blur))
        k_final.append(random_final_sinc_kernel(
            generator, prob=cfg.final_sinc_prob, sizes=cfg.final_sinc_sizes,
            cutoff_range=cfg.final_sinc_cutoff_range, pad_to=cfg.final_sinc_pad_to,
        ))
    first = _sample_order(generator, batch, cfg.first, torch.stack(k1))
    first_quality = _jpeg_qualities(generator, batch, cfg.first.jpeg_quality_range)
    second = None
    if _coin(generator, cfg.second_order_prob):
        second = _sample_order(generator, batch, cfg.second, torch.stack(k2))
    return DegradationPlan(
        first=first,
        first_jpeg_quality=first_quality,
        second=second,
        final_kernels=torch.stack(k_final),
        final_resize_first=_coin(generator, cfg.final_resize_first_prob),
        final_resize_mode=_pick(generator, cfg.final_resize_modes),
        final_jpeg_quality=_jpeg_qualities(generator, batch, cfg.second.jpeg_quality_range),
    )


# --- operations ------------------------------------------------------------------------------
def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [0,1] and round to the nearest k/255; same shape, dtype and device."""
    return (img * 255.0).round().clamp(0, 255) / 255.0


def filter2d(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own kernel: (N,C,H,W) and (N,k,k), k odd -> (N,C,H,W).

    Reflect padding keeps the size; a correlation, like the release (the kernels are
    point-symmetric, so it equals a convolution).
    """
    n, c, h, w = img.shape
    k = kernels.shape[-1]
    padded = F.pad(img, (k // 2,) * 4, mode="reflect")
    weight = kernels.to(img.device, img.dtype).view(n, 1, k, k).repeat_interleave(c, dim=0)
    out = F.conv2d(padded.reshape(1, n * c, h + k - 1, w + k - 1), weight, groups=n * c)
    return out.view(n, c, h, w)


def resize(
    img: torch.Tensor, mode: str, *, size: tuple[int, int] | None = None, factor: float | None = None
) -> torch.Tensor:
    """F.interpolate as in the release: align_corners=False for the linear modes, no antialias."""
    align = False if mode in ("bilinear", "bicubic") else None
    if size is not None:
        return F.interpolate(img, size=size, mode=mode, align_corners=align)
    return F.interpolate(img, scale_factor=factor, mode=mode, align_corners=align)


def add_gaussian_noise(
    img: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """img + sigma·z, clamped to [0,1]; z ~ N(0,1) per pixel and channel, or one field shared by
    the three channels where ``gray``. sigma (N,) in [0,1] units; gray (N,) bool."""
    n, c, h, w = img.shape
    noise = torch.randn((n, c, h, w), generator=generator)
    if bool(gray.any()):
        mono = torch.randn((int(gray.sum()), 1, h, w), generator=generator)
        noise[gray] = mono.expand(-1, c, -1, -1)
    noise = noise * sigma.to(torch.float32).view(n, 1, 1, 1)
    return (img + noise.to(img.device, img.dtype)).clamp(0, 1)


def _poisson_residual(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Shot noise at a photon count of 2^ceil(log2(#distinct 8-bit levels)) per unit intensity,
    # as in the release: q = 8-bit(img), residual = Poisson(q·vals)/vals − q.
    q = quantize_8bit(img)
    levels = torch.tensor([float(torch.unique(q[i]).numel()) for i in range(q.shape[0])], dtype=torch.float64)
    vals = torch.exp2(torch.ceil(torch.log2(levels))).to(q.dtype).view(-1, 1, 1, 1)
    return torch.poisson(q * vals, generator=generator) / vals - q


def add_poisson_noise(
    img: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """img + scale·residual, clamped to [0,1]; the residual is computed on the luma and shared by
    the channels where ``gray``. scale (N,) float; gray (N,) bool. Sampled on the CPU so that the
    draws do not depend on the device."""
    n, c, h, w = img.shape
    src = img.detach().to("cpu", torch.float32)
    noise = torch.empty_like(src)
    colour = ~gray
    if bool(colour.any()):
        noise[colour] = _poisson_residual(src[colour], generator)
    if bool(gray.any()):
        weights = torch.tensor(_LUMA, dtype=src.dtype).view(1, 3, 1, 1)
        luma = (src[gray] * weights).sum(dim=1, keepdim=True)
        noise[gray] = _poisson_residual(luma, generator).expand(-1, c, -1, -1)
    noise = noise * scale.to(torch.float32).view(n, 1, 1, 1)
    return (img + noise.to(img.device, img.dtype)).clamp(0, 1)


def jpeg_compress(img: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Per-sample JPEG (libjpeg via OpenCV, 4:2:0): (N,3,H,W) RGB in [0,1] and (N,) int qualities
    -> (N,3,H,W) float on the same device, on the 8-bit grid. Input is clamped and rounded first."""
    arr = (quantize_8bit(img.detach()) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        params = [
            cv2.IMWRITE_JPEG_QUALITY, int(quality[i]),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        ]
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(arr[i, :, :, ::-1]), params)  # OpenCV wants BGR
        if not ok:
            raise RuntimeError(f"jpeg_compress: OpenCV failed to encode a {arr.shape[1]}x{arr.shape[2]} image")
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(img.device, img.dtype) / 255.0


def _apply_order(
    img: torch.Tensor, plan: OrderPlan, generator: torch.Generator, size: tuple[int, int] | None
) -> torch.Tensor:
    if plan.blur:
        img = filter2d(img, plan.kernels)
    if size is None:  # first order: a factor of the GT size, as released
        img = resize(img, plan.resize_mode, factor=plan.resize_factor)
    else:
        img = resize(img, plan.resize_mode, size=size)
    add_noise = add_gaussian_noise if plan.noise.gaussian else add_poisson_noise
    return add_noise(img, plan.noise.strength, plan.noise.gray, generator)


def apply_plan(gt: torch.Tensor, plan: DegradationPlan, *, generator: torch.Generator,
               scale: int = SCALE) -> torch.Tensor:
    """Run the pipeline for ``plan``; noise fields come from ``generator``. Shapes as ``degrade``."""
    img = gt.to(torch.float32)
    lr_size = (gt.shape[-2] // scale, gt.shape[-1] // scale)
    img = _apply_order(img, plan.first, generator, size=None)
    img = jpeg_compress(img, plan.first_jpeg_quality)
    if plan.second is not None:
        f = plan.second.resize_factor
        img = _apply_order(img, plan.second, generator, size=(int(lr_size[0] * f), int(lr_size[1] * f)))
    if plan.final_resize_first:
        img = filter2d(resize(img, plan.final_resize_mode, size=lr_size), plan.final_kernels)
        img = jpeg_compress(img, plan.final_jpeg_quality)
    else:
        img = jpeg_compress(img, plan.final_jpeg_quality)
        img = filter2d(resize(img, plan.final_resize_mode, size=lr_size), plan.final_kernels)
    return quantize_8bit(img)


def _check_inputs(gt: torch.Tensor, generator: torch.Generator, config: DegradationConfig, scale: int) -> None:
    if not isinstance(gt, torch.Tensor) or gt.ndim != 4 or gt.shape[1] != 3 or not gt.is_floating_point():
        got = f"{tuple(gt.shape)} {gt.dtype}" if isinstance(gt, torch.Tensor) else type(gt).__name__
        raise InputError(f"degrade: gt is {got}; expected a float (N,3,H,W) tensor in [0,1]")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise InputError("degrade: generator must be a CPU torch.Generator (draws must not depend on the device)")
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"degrade: scale is {scale!r}; expected a positive int")
    h, w = gt.shape[-2:]
    if h % scale or w % scale:
        raise InputError(f"degrade: GT size {h}x{w} is not divisible by scale {scale}; crop it to a multiple")
    if min(h, w) < _min_side(config, scale):
        raise InputError(
            f"degrade: GT size {h}x{w} is too small for the blur kernels of this config; "
            f"expected sides of at least {_min_side(config, scale)} (training uses 256x256 crops)"
        )


def _min_side(config: DegradationConfig, scale: int) -> int:
    # Reflect padding needs each blurred image to be larger than half its kernel: the GT (first
    # blur), the smallest first-order resize (second blur) and the LR (final sinc).
    def fits(side: int) -> bool:
        return (
            side > config.first.blur.pad_to // 2
            and math.floor(side * config.first.resize_range[0]) > config.second.blur.pad_to // 2
            and side // scale > config.final_sinc_pad_to // 2
        )

    side = scale
    while not fits(side):
        side += scale
    return side


def degrade(
    gt: torch.Tensor,
    *,
    generator: torch.Generator,
    config: DegradationConfig = DegradationConfig(),
    scale: int = SCALE,
) -> torch.Tensor:
    """Make training LR from GT with the second-order degradation of SPEC §5.

    gt: (N,3,H,W) float in [0,1], CPU or CUDA, H and W multiples of ``scale`` (256 in training).
    generator: CPU torch.Generator; the same seed gives the same draws on any device.
    Returns (N,3,H/scale,W/scale) float32 on gt's device, in [0,1], on the 8-bit grid (k/255).
    """
    _check_inputs(gt, generator, config, scale)
    plan = sample_plan(generator, gt.shape[0], config)
    return apply_plan(gt, plan, generator=generator, scale=scale)


def bicubic_lr(gt: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Plain bicubic ×1/scale of (N,3,H,W) [0,1] GT, antialiased (PIL BICUBIC's filter), clamped to
    [0,1] and rounded to 8 bit — the "bicubic ×4 downscaling" of the evaluation sets (SPEC §6)."""
    lr = F.interpolate(gt, scale_factor=1 / scale, mode="bicubic", align_corners=False, antialias=True)
    return quantize_8bit(lr)


def mix_clean(gt: torch.Tensor, lq: torch.Tensor, prob: float, *, generator: torch.Generator,
              scale: int = SCALE) -> torch.Tensor:
    """``lq`` with each sample replaced, with probability ``prob`` (one coin per sample from the CPU
    ``generator``), by :func:`bicubic_lr` of its GT. prob = 0 returns ``lq`` itself without a draw."""
    if prob <= 0:
        return lq
    clean = torch.rand(gt.shape[0], generator=generator) < prob
    if not bool(clean.any()):
        return lq
    out = lq.clone()
    idx = clean.nonzero().flatten().to(gt.device)
    out[idx] = bicubic_lr(gt[idx], scale)
    return out
