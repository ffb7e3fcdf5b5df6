"""Blur and sinc kernels of the Real-ESRGAN degradation (SPEC §5), written from the formulas.

Every kernel is a float64 CPU tensor of shape (k, k), k odd, summing to 1, centred on pixel
((k-1)/2, (k-1)/2). Coordinates: x runs along columns, y along rows. With the covariance
Σ = R(θ) diag(σx², σy²) R(θ)ᵀ and the quadratic form Q(p) = pᵀ Σ⁻¹ p:

- Gaussian:              exp(-Q / 2)
- generalized Gaussian:  exp(-Q^β / 2)          (β = betag; β = 1 is the Gaussian)
- plateau:               1 / (1 + Q^β)          (β = betap)
- circular sinc ("jinc"): ω J1(ω r) / (2π r),  value ω² / (4π) at r = 0  (ideal 2-D low-pass
  with cutoff ω in radians per pixel, truncated to k×k)

All randomness comes from a CPU ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)


# --- deterministic kernels ---------------------------------------------------------------
def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """Q = pᵀ Σ⁻¹ p on the (size, size) grid centred at 0; float64."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    cos, sin = math.cos(theta), math.sin(theta)
    # Rᵀ p rotates the point into the kernel's principal axes, where Σ is diagonal.
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: torch.Tensor) -> torch.Tensor:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> torch.Tensor:
    """Anisotropic Gaussian (isotropic when sigma_x == sigma_y); (size, size) float64, sum 1."""
    return _normalised(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> torch.Tensor:
    """exp(-Q^β / 2); heavier tails for β < 1, flatter top for β > 1. (size, size) float64, sum 1."""
    return _normalised(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """1 / (1 + Q^β): flat top with polynomial tails. (size, size) float64, sum 1."""
    return _normalised(1.0 / (1.0 + _quadratic_form(size, sigma_x, sigma_y, theta) ** beta))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass (jinc) with cutoff ω = ``cutoff`` rad/pixel; (size, size) float64, sum 1."""
    r0 = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    radius = torch.sqrt(r0[:, None] ** 2 + r0[None, :] ** 2)
    safe = torch.where(radius > 0, radius, torch.ones_like(radius))  # avoid 0/0 at the centre
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius > 0, kernel, torch.full_like(kernel, cutoff**2 / (4 * math.pi)))
    return _normalised(kernel)


def delta_kernel(size: int) -> torch.Tensor:
    """Identity filter: 1 at the centre, 0 elsewhere; (size, size) float64."""
    kernel = torch.zeros(size, size, dtype=torch.float64)
    kernel[size // 2, size // 2] = 1.0
    return kernel


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (k, k) kernel, k odd, to (size, size), size odd >= k, keeping it centred."""
    k = kernel.shape[-1]
    if size < k or (size - k) % 2:
        raise ValueError(f"pad_kernel: cannot centre a {k}x{k} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p))


# --- random kernels ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class KernelTypeProbs:
    """Probability of each blur kernel family (SPEC §5); must sum to 1."""

    iso: float = 0.45
    aniso: float = 0.25
    generalized_iso: float = 0.12
    generalized_aniso: float = 0.03
    plateau_iso: float = 0.12
    plateau_aniso: float = 0.03

    def __post_init__(self) -> None:
        probs = self.as_tuple()
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ConfigError(
                f"degradation config: kernel type probabilities {dict(zip(KERNEL_TYPES, probs))} "
                "must be >= 0 and sum to 1; fix kernel_probs"
            )

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, name)) for name in KERNEL_TYPES)


@dataclass(frozen=True, kw_only=True)
class BlurConfig:
    """One order's blur: kernel size, family, shape ranges and the sinc alternative (SPEC §5).

    ``sinc_cutoff_range`` applies to kernels smaller than ``sinc_large_size``, and
    ``sinc_cutoff_range_large`` to the others (larger kernels may use lower cutoffs).
    """

    kernel_sizes: tuple[int, ...] = tuple(range(3, 20, 2))
    pad_to: int = 21
    kernel_probs: KernelTypeProbs = KernelTypeProbs()
    sigma_range: tuple[float, float] = (0.2, 3.0)
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_cutoff_range: tuple[float, float] = (math.pi / 3, math.pi)
    sinc_cutoff_range_large: tuple[float, float] = (math.pi / 5, math.pi)
    sinc_large_size: int = 13

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        check_kernel_sizes("blur", self.kernel_sizes, self.pad_to)
        for name in ("sigma_range", "rotation_range", "betag_range", "betap_range",
                     "sinc_cutoff_range", "sinc_cutoff_range_large"):
            check_range(f"blur.{name}", getattr(self, name))
        if self.sigma_range[0] <= 0 or self.betag_range[0] <= 0 or self.betap_range[0] <= 0:
            raise ConfigError("degradation config: blur sigma and beta ranges must be > 0; fix blur")
        for name in ("sinc_cutoff_range", "sinc_cutoff_range_large"):
            check_cutoff(f"blur.{name}", getattr(self, name))
        check_prob("blur.sinc_prob", self.sinc_prob)


def check_range(where: str, value: tuple[float, float]) -> None:
    """Raise ConfigError unless ``value`` is a (lo, hi) pair with lo <= hi."""
    if len(value) != 2 or not value[0] <= value[1]:
        raise ConfigError(f"degradation config: {where} is {value}; expected a pair lo <= hi")


def check_cutoff(where: str, value: tuple[float, float]) -> None:
    """A sinc cutoff ω_c of 0 makes an all-zero kernel (NaN once normalised): lo must be > 0."""
    if not value[0] > 0:
        raise ConfigError(f"degradation config: {where} is {value}; expected cutoffs > 0 (SPEC: π/3 .. π)")


def check_prob(where: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"degradation config: {where} is {value}; expected a probability in [0, 1]")


def check_kernel_sizes(where: str, sizes: tuple[int, ...], pad_to: int) -> None:
    if not sizes or pad_to % 2 == 0 or any(k < 1 or k % 2 == 0 or k > pad_to for k in sizes):
        raise ConfigError(
            f"degradation config: {where} kernel sizes {sizes} padded to {pad_to}; "
            "expected odd sizes no larger than an odd pad_to"
        )


def rand_uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    """One draw from U[lo, hi) on the CPU generator."""
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def rand_index(generator: torch.Generator, probs: tuple[float, ...]) -> int:
    """Index i drawn with probability probs[i] (probs sum to 1)."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    total = 0.0
    for i, p in enumerate(probs):
        total += p
        if u < total:
            return i
    return max(i for i, p in enumerate(probs) if p > 0)  # u landed in float round-off past the end


def _split_beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    # As released (basicsr): half the draws from U[lo, 1], half from U[1, hi], so β < 1 and
    # β > 1 are equally likely; for betap [1, 2] the lower half is β = 1 exactly.
    lo, hi = beta_range
    if float(torch.rand((), generator=generator, dtype=torch.float64)) < 0.5:
        return rand_uniform(generator, min(lo, 1.0), min(hi, 1.0))
    return rand_uniform(generator, max(lo, 1.0), max(hi, 1.0))


def random_mixed_kernel(generator: torch.Generator, size: int, cfg: BlurConfig) -> torch.Tensor:
    """A Gaussian-family kernel: family by ``cfg.kernel_probs``; (size, size) float64, sum 1."""
    family = KERNEL_TYPES[rand_index(generator, cfg.kernel_probs.as_tuple())]
    sigma_x = rand_uniform(generator, *cfg.sigma_range)
    if family.endswith("aniso"):
        sigma_y = rand_uniform(generator, *cfg.sigma_range)
        theta = rand_uniform(generator, *cfg.rotation_range)
    else:
        sigma_y, theta = sigma_x, 0.0
    if family.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _split_beta(generator, cfg.betag_range))
    if family.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _split_beta(generator, cfg.betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


def random_blur_kernel(generator: torch.Generator, cfg: BlurConfig) -> torch.Tensor:
    """One image's blur kernel: size uniform over ``cfg.kernel_sizes``, sinc with
    ``cfg.sinc_prob`` else a mixed Gaussian-family kernel; (pad_to, pad_to) float64, sum 1."""
    size = cfg.kernel_sizes[int(torch.randint(len(cfg.kernel_sizes), (), generator=generator))]
    if float(torch.rand((), generator=generator, dtype=torch.float64)) < cfg.sinc_prob:
        cutoffs = cfg.sinc_cutoff_range if size < cfg.sinc_large_size else cfg.sinc_cutoff_range_large
        kernel = sinc_kernel(size, rand_uniform(generator, *cutoffs))
    else:
        kernel = random_mixed_kernel(generator, size, cfg)
    return pad_kernel(kernel, cfg.pad_to)


def random_final_sinc_kernel(
    generator: torch.Generator,
    *,
    prob: float,
    sizes: tuple[int, ...],
    cutoff_range: tuple[float, float],
    pad_to: int,
) -> torch.Tensor:
    """The final-stage filter: with ``prob`` a sinc of random size and cutoff, else the identity;
    (pad_to, pad_to) float64, sum 1."""
    if float(torch.rand((), generator=generator, dtype=torch.float64)) >= prob:
        return delta_kernel(pad_to)
    size = sizes[int(torch.randint(len(sizes), (), generator=generator))]
    return pad_kernel(sinc_kernel(size, rand_uniform(generator, *cutoff_range)), pad_to)
