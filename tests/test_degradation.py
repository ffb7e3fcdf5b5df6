"""Real-ESRGAN second-order degradation (SPEC §5): kernels, noise, JPEG, plan and pipeline."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import scipy.special
import torch

from gtasr_deploy.errors import ConfigError, InputError
from gtasr_deploy.training import kernels as K
from gtasr_deploy.training.degradation import (
    DegradationConfig,
    OrderConfig,
    add_gaussian_noise,
    add_poisson_noise,
    apply_plan,
    degrade,
    filter2d,
    jpeg_compress,
    quantize_8bit,
    sample_plan,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_gt(n: int = 2, size: int = 256, seed: int = 0, cell_px: int = 8) -> torch.Tensor:
    """A textured but band-limited GT: a random field of size/cell_px upsampled bicubically."""
    low = torch.rand(n, 3, size // cell_px, size // cell_px, generator=gen(seed))
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# --- kernels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, 7, 13, 21])
def test_every_kernel_family_sums_to_one_with_its_size(size):
    kernels = [
        K.gaussian_kernel(size, 1.3, 0.6, 0.7),
        K.generalized_gaussian_kernel(size, 1.3, 0.6, 0.7, 0.6),
        K.plateau_kernel(size, 1.3, 0.6, 0.7, 1.7),
        K.sinc_kernel(size, math.pi / 4),
        K.delta_kernel(size),
    ]
    for kernel in kernels:
        assert kernel.shape == (size, size)
        assert abs(float(kernel.sum()) - 1.0) <= 1e-6


def test_gaussian_matches_the_covariance_formula():
    size, sx, sy, theta = 9, 2.0, 0.7, 0.5
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    r = np.arange(size) - (size - 1) / 2
    xx, yy = np.meshgrid(r, r)  # x along columns, y along rows
    p = np.stack([xx, yy], -1)
    expected = np.exp(-0.5 * np.einsum("...i,ij,...j->...", p, inv, p))
    expected /= expected.sum()
    np.testing.assert_allclose(K.gaussian_kernel(size, sx, sy, theta).numpy(), expected, rtol=1e-10, atol=1e-14)


def test_kernel_symmetries():
    iso = K.gaussian_kernel(11, 1.7, 1.7, 0.0)
    assert torch.allclose(iso, iso.T) and torch.allclose(iso, iso.flip(0)) and torch.allclose(iso, iso.flip(1))
    for kernel in (K.gaussian_kernel(11, 2.5, 0.5, 0.9), K.plateau_kernel(11, 2.5, 0.5, 0.9, 1.5),
                   K.generalized_gaussian_kernel(11, 2.5, 0.5, 0.9, 3.0)):
        assert torch.allclose(kernel, kernel.flip(0, 1), atol=1e-15)  # point symmetric
        assert not torch.allclose(kernel, kernel.T, atol=1e-4)  # but really anisotropic
    # A quarter turn swaps the axes: (σx, σy, θ=π/2) is (σy, σx, 0).
    quarter_turn = K.gaussian_kernel(11, 2.5, 0.5, math.pi / 2)
    assert torch.allclose(quarter_turn, K.gaussian_kernel(11, 0.5, 2.5, 0.0), atol=1e-12)
    # The generalized Gaussian with β = 1 is the Gaussian.
    assert torch.allclose(K.generalized_gaussian_kernel(9, 1.2, 0.8, 0.3, 1.0), K.gaussian_kernel(9, 1.2, 0.8, 0.3))


def test_plateau_is_flatter_at_the_top_for_larger_beta():
    low, high = K.plateau_kernel(15, 3.0, 3.0, 0.0, 1.0), K.plateau_kernel(15, 3.0, 3.0, 0.0, 2.0)
    c = 7
    assert float(high[c, c + 1] / high[c, c]) > float(low[c, c + 1] / low[c, c])


def test_sinc_matches_the_jinc_formula():
    size, cutoff = 11, 1.3
    r0 = np.arange(size) - (size - 1) / 2
    radius = np.hypot(r0[:, None], r0[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = cutoff * scipy.special.j1(cutoff * radius) / (2 * np.pi * radius)
    expected[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    expected /= expected.sum()
    kernel = K.sinc_kernel(size, cutoff)
    # torch.special.bessel_j1 is good to ~1e-8 absolute (scipy's j1 to ~1e-16): far below 1/255.
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=0, atol=5e-8)
    assert torch.allclose(kernel, kernel.T) and torch.allclose(kernel, kernel.flip(0))


def _radial_response(kernel: torch.Tensor, n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    spectrum = np.abs(np.fft.fft2(kernel.numpy(), s=(n, n)))
    w = 2 * np.pi * np.fft.fftfreq(n)
    return spectrum, np.hypot(w[:, None], w[None, :])


@pytest.mark.parametrize("cutoff", [math.pi / 4, math.pi / 2])
def test_sinc_passes_below_and_stops_above_its_cutoff(cutoff):
    spectrum, omega = _radial_response(K.sinc_kernel(21, cutoff))
    assert spectrum[0, 0] == pytest.approx(1.0)
    passband = spectrum[omega < 0.7 * cutoff].mean()
    stopband = spectrum[(omega > 1.3 * cutoff) & (omega < math.pi)].mean()
    assert passband > 0.85 and stopband < 0.1


def test_padding_centres_the_kernel():
    kernel = K.gaussian_kernel(7, 1.0, 2.0, 0.4)
    padded = K.pad_kernel(kernel, 21)
    assert padded.shape == (21, 21) and float(padded.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(padded[7:14, 7:14], kernel) and float(padded.abs().sum() - kernel.abs().sum()) == 0.0


def _support(kernel: torch.Tensor) -> tuple[int, int]:
    rows = torch.nonzero(kernel.abs().sum(1) > 0).flatten()
    return int(rows[-1] - rows[0] + 1), int(rows[0])


@pytest.mark.parametrize("order", ["first", "second"])
def test_random_kernels_have_the_configured_sizes(order):
    cfg = getattr(DegradationConfig(), order).blur
    g = gen(3)
    for _ in range(120):
        kernel = K.random_blur_kernel(g, cfg)
        assert kernel.shape == (cfg.pad_to, cfg.pad_to)
        assert abs(float(kernel.sum()) - 1.0) <= 1e-6
        support, first_row = _support(kernel)  # tails of sharp kernels may underflow to 0
        assert support % 2 == 1 and support <= max(cfg.kernel_sizes) and first_row == (cfg.pad_to - support) // 2
    # Sinc kernels have no vanishing tails: their support is the drawn size, and every size occurs.
    sinc_only = replace(cfg, sinc_prob=1.0)
    seen = {_support(K.random_blur_kernel(g, sinc_only))[0] for _ in range(120)}
    assert seen == set(cfg.kernel_sizes)


def test_final_sinc_kernel_is_identity_or_sinc():
    cfg = DegradationConfig()
    g = gen(5)
    draws = [K.random_final_sinc_kernel(g, prob=cfg.final_sinc_prob, sizes=cfg.final_sinc_sizes,
                                        cutoff_range=cfg.final_sinc_cutoff_range, pad_to=15) for _ in range(300)]
    identity = sum(bool(torch.equal(k, K.delta_kernel(15))) for k in draws)
    assert all(k.shape == (15, 15) and abs(float(k.sum()) - 1) <= 1e-6 for k in draws)
    assert 0.12 < identity / len(draws) < 0.28  # 1 − 0.8


# --- operations --------------------------------------------------------------------------------
def test_filter2d_uses_each_images_own_kernel():
    kernels = torch.stack([K.pad_kernel(K.gaussian_kernel(9, 2.0, 0.6, 0.8), 21),
                           K.pad_kernel(K.sinc_kernel(13, 1.0), 21)])
    img = torch.zeros(2, 3, 41, 41)
    img[:, :, 20, 20] = 1.0
    out = filter2d(img, kernels)
    assert out.shape == img.shape
    for i in range(2):
        for c in range(3):
            assert torch.allclose(out[i, c, 10:31, 10:31], kernels[i].float(), atol=1e-7)
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(filter2d(flat, kernels), flat, atol=1e-6)  # reflect padding, sum-1 kernels
    x = torch.rand(2, 3, 32, 32, generator=gen(1))
    assert torch.equal(filter2d(x, torch.stack([K.delta_kernel(15)] * 2)), x)


def test_gaussian_noise_sigma_per_sample_and_gray_channels():
    sigma = torch.tensor([2.0, 10.0, 25.0, 25.0], dtype=torch.float64) / 255
    gray = torch.tensor([False, True, False, True])
    img = torch.full((4, 3, 128, 128), 0.5)
    noise = add_gaussian_noise(img, sigma, gray, gen(0)) - img
    for i in range(4):
        assert float(noise[i].std()) == pytest.approx(float(sigma[i]), rel=0.03)
        same = torch.equal(noise[i, 0], noise[i, 1]) and torch.equal(noise[i, 1], noise[i, 2])
        assert same == bool(gray[i])
    bright = torch.full((1, 3, 32, 32), 0.99)
    clipped = add_gaussian_noise(bright, torch.tensor([30 / 255]), torch.tensor([False]), gen(1))
    assert float(clipped.max()) <= 1.0 and float(clipped.min()) >= 0.0


def test_poisson_noise_variance_and_gray_channels():
    # 128 distinct 8-bit levels in [0.25, 0.75) -> vals = 128, Var(noise) = scale² · q / 128.
    levels = (64 + torch.arange(128)).float() / 255
    img = levels.repeat(256).view(1, 1, 256, 128).expand(2, 3, -1, -1).contiguous()
    scale = torch.tensor([0.5, 1.0], dtype=torch.float64)
    noise = add_poisson_noise(img, scale, torch.tensor([False, False]), gen(0)) - img
    for i in range(2):
        expected_var = float(scale[i]) ** 2 * float(img[i].mean()) / 128
        assert float(noise[i].var()) == pytest.approx(expected_var, rel=0.05)
        assert not torch.equal(noise[i, 0], noise[i, 1])
    gray_noise = add_poisson_noise(img, scale, torch.tensor([True, False]), gen(0)) - img
    assert torch.equal(gray_noise[0, 0], gray_noise[0, 1]) and torch.equal(gray_noise[0, 1], gray_noise[0, 2])
    assert not torch.equal(gray_noise[1, 0], gray_noise[1, 1])


def test_jpeg_per_sample_quality_grid_and_420():
    # Texture in the luma only, so the error measures quantisation rather than chroma subsampling.
    img = smooth_gt(1, 64) * 0.8 + 0.2 * torch.rand(1, 1, 64, 64, generator=gen(2))
    img = torch.cat([img, img])
    out = jpeg_compress(img, torch.tensor([30, 95]))
    assert out.shape == img.shape and out.dtype == torch.float32
    assert torch.equal(out, quantize_8bit(out))
    err = (out - quantize_8bit(img)).abs().mean(dim=(1, 2, 3))
    assert float(err[0]) > 1.5 * float(err[1])  # quality is per sample
    # 4:2:0: a one-pixel red/blue column pattern loses its chroma even at high quality.
    stripes = torch.zeros(1, 3, 32, 33)
    stripes[0, 0, :, 0::2] = 1.0
    stripes[0, 2, :, 1::2] = 1.0
    assert float((jpeg_compress(stripes, torch.tensor([95])) - stripes).abs().mean()) > 0.15
    rgb = (stripes[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1].copy(), params)
    full_chroma = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1] / 255.0
    assert np.abs(full_chroma - rgb / 255.0).mean() < 0.05  # the same pattern survives 4:4:4


# --- plan and pipeline ---------------------------------------------------------------------------
def test_plan_granularity():
    cfg = DegradationConfig()
    n = 6
    plan = sample_plan(gen(11), n, cfg)
    assert plan.first.kernels.shape == (n, 21, 21) and plan.final_kernels.shape == (n, 15, 15)
    assert len({tuple(k.flatten().tolist()) for k in plan.first.kernels}) == n  # per image
    for q in (plan.first_jpeg_quality, plan.final_jpeg_quality):
        assert q.shape == (n,) and q.dtype == torch.int64 and int(q.min()) >= 30 and int(q.max()) <= 95
    noise = plan.first.noise
    assert isinstance(noise.gaussian, bool) and noise.strength.shape == (n,) and noise.gray.shape == (n,)
    assert len(set(noise.strength.tolist())) == n  # per sample
    assert isinstance(plan.first.resize_factor, float) and plan.first.resize_mode in ("area", "bilinear", "bicubic")
    assert isinstance(plan.final_resize_first, bool) and isinstance(plan.final_resize_mode, str)


def test_plan_frequencies_and_ranges():
    cfg = DegradationConfig()
    plans = [sample_plan(gen(s), 1, cfg) for s in range(400)]
    second = [p.second for p in plans if p.second is not None]
    assert 0.42 < len(second) / len(plans) < 0.58
    assert 0.72 < sum(o.blur for o in second) / len(second) < 0.88
    assert all(p.first.blur for p in plans)
    first_f = np.array([p.first.resize_factor for p in plans])
    second_f = np.array([o.resize_factor for o in second])
    assert first_f.min() >= 0.15 and first_f.max() <= 1.5 and second_f.min() >= 0.3 and second_f.max() <= 1.2
    assert 0.13 < np.mean(first_f > 1) < 0.27 and 0.62 < np.mean(first_f < 1) < 0.78
    assert 0.2 < np.mean(second_f == 1) < 0.4
    firsts = [p.first for p in plans]
    for o, (lo, hi) in [firsts, cfg.first.gaussian_sigma_range_8bit], [second, cfg.second.gaussian_sigma_range_8bit]:
        sig = np.concatenate([x.noise.strength.numpy() * 255 for x in o if x.noise.gaussian])
        assert sig.min() >= lo and sig.max() <= hi
    for o, (lo, hi) in [firsts, cfg.first.poisson_scale_range], [second, cfg.second.poisson_scale_range]:
        scales = np.concatenate([x.noise.strength.numpy() for x in o if not x.noise.gaussian])
        assert scales.min() >= lo and scales.max() <= hi and scales.max() > 0.8 * hi
    assert 0.42 < np.mean([p.first.noise.gaussian for p in plans]) < 0.58
    assert 0.32 < np.mean([bool(p.first.noise.gray[0]) for p in plans]) < 0.48
    assert 0.42 < np.mean([p.final_resize_first for p in plans]) < 0.58


def test_degrade_shape_range_grid_and_determinism():
    gt = smooth_gt(2)
    lr = degrade(gt, generator=gen(7))
    assert lr.shape == (2, 3, 64, 64) and lr.dtype == torch.float32 and lr.device == gt.device
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
    assert torch.equal(lr, quantize_8bit(lr))
    assert torch.equal(lr, degrade(gt, generator=gen(7)))
    assert not torch.equal(lr, degrade(gt, generator=gen(8)))


def test_degrade_tracks_the_gt():
    gt = smooth_gt(2, seed=4)
    ref = torch.nn.functional.interpolate(gt, size=(64, 64), mode="area")
    for seed in range(3):
        lr = degrade(gt, generator=gen(seed))
        assert float((lr - ref).abs().mean()) < 0.15  # degraded, but still the same picture
        assert float((lr - ref.flip(0)).abs().mean()) > float((lr - ref).abs().mean())


@pytest.mark.parametrize("resize_first", [True, False])
def test_trivial_plan_reduces_to_a_resize(resize_first):
    gt = smooth_gt(2, seed=6, cell_px=64)  # features of 16 LR pixels: 4:2:0 costs little
    plan = sample_plan(gen(0), 2)
    quiet = lambda o: replace(o, blur=False, resize_factor=1.0, resize_mode="area",  # noqa: E731
                             noise=replace(o.noise, gaussian=True, strength=torch.zeros(2, dtype=torch.float64)))
    plan = replace(plan, first=quiet(plan.first), second=None, final_resize_mode="area",
                   final_resize_first=resize_first,
                   first_jpeg_quality=torch.tensor([100, 100]), final_jpeg_quality=torch.tensor([100, 100]),
                   final_kernels=torch.stack([K.delta_kernel(15)] * 2))
    lr = apply_plan(gt, plan, generator=gen(0))
    ref = torch.nn.functional.interpolate(gt, size=(64, 64), mode="area")
    # Left: area resize, 8-bit rounding and two q100 JPEGs.
    assert float((lr - ref).abs().mean()) < 2 / 255
    assert float((lr - ref.flip(1)).abs().mean()) > 4 * float((lr - ref).abs().mean())  # RGB order kept


def test_config_defaults_are_the_spec_table():
    cfg = DegradationConfig()
    assert cfg.first.blur.kernel_sizes == (3, 5, 7, 9, 11, 13, 15, 17, 19) and cfg.first.blur.pad_to == 21
    assert cfg.second.blur.kernel_sizes == (3, 5, 7, 9, 11, 13) and cfg.second.blur.pad_to == 15
    assert cfg.first.blur.kernel_probs.as_tuple() == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert cfg.first.blur.sigma_range == (0.2, 3.0) and cfg.second.blur.sigma_range == (0.2, 1.5)
    assert cfg.second.blur_prob == 0.8 and cfg.second_order_prob == 0.5
    assert cfg.first.resize_probs == (0.2, 0.7, 0.1) and cfg.second.resize_probs == (0.3, 0.4, 0.3)
    assert cfg.first.resize_range == (0.15, 1.5) and cfg.second.resize_range == (0.3, 1.2)
    assert cfg.second.gaussian_sigma_range_8bit == (1.0, 25.0) and cfg.second.poisson_scale_range == (0.05, 2.5)
    assert cfg.final_sinc_prob == 0.8 and cfg.final_sinc_pad_to == 15


def test_config_round_trip_and_errors():
    cfg = DegradationConfig.from_dict({"second": {"blur_prob": 1.0}, "final_sinc_prob": 0.5})
    # A partial table keeps the second order's own defaults.
    assert cfg.second.blur_prob == 1.0 and cfg.second.resize_range == (0.3, 1.2)
    assert DegradationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown keys \['bogus'\]; valid keys: \['blur',"):
        DegradationConfig.from_dict({"first": {"bogus": 1}})
    with pytest.raises(ConfigError, match="resize_probs"):
        OrderConfig(resize_probs=(0.5, 0.6, 0.1))
    with pytest.raises(ConfigError, match="kernel sizes"):
        K.BlurConfig(kernel_sizes=(4,), pad_to=21)
    with pytest.raises(TypeError):
        DegradationConfig(0.5)  # keyword-only


def test_degrade_rejects_bad_inputs():
    with pytest.raises(InputError, match="expected a float"):
        degrade(torch.rand(2, 1, 256, 256), generator=gen(0))
    with pytest.raises(InputError, match="not divisible"):
        degrade(torch.rand(1, 3, 258, 256), generator=gen(0))
    with pytest.raises(InputError, match="too small"):
        degrade(torch.rand(1, 3, 32, 32), generator=gen(0))
    with pytest.raises(InputError, match="CPU torch.Generator"):
        degrade(torch.rand(1, 3, 256, 256), generator=None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_draws():
    gt = smooth_gt(2, seed=9)
    cpu = degrade(gt, generator=gen(3))
    cuda = degrade(gt.cuda(), generator=gen(3))
    assert cuda.device.type == "cuda" and cuda.shape == cpu.shape
    # Same draws; conv/resize round-off differs by device and JPEG may amplify a 1-level flip locally.
    assert float((cuda.cpu() - cpu).abs().mean()) < 2 / 255
