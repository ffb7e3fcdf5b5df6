"""PSNR/SSIM/LSD on Y, NIQE: invariants on generated images and published values on TID2013 pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gtasr_deploy.errors import InputError
from gtasr_deploy.metrics.assets import ASSETS, AssetFetchError, asset_path, fetch_assets, pip_download
from gtasr_deploy.metrics.fullref import lsd_y, psnr, psnr_y, rgb_to_y, ssim, ssim_y
from gtasr_deploy.metrics.niqe import (
    _aggd,
    fspecial_gaussian,
    matlab_imresize,
    matlab_rgb2gray,
    niqe,
)

# pyiqa ResultsCalibra.md "(org)" rows: NIQE = authors' MATLAB computequality on rgb2gray,
# SSIM = Wang's MATLAB ssim_index on rgb2gray, PSNR = skimage on the 3 RGB channels.
NIQE_MATLAB = (15.7536, 3.6549, 3.2355, 3.1840, 8.6352)
SSIM_GRAY_MATLAB = (0.6993, 0.9978, 0.9989, 0.9669, 0.6519)
PSNR_RGB = (21.11, 20.99, 27.01, 23.30, 21.62)


def _photo_like(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture, (h,w,3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 4, y * 3, (x + y) * 2], axis=-1) % 256
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    out = img.astype(np.float64)
    for axis in (0, 1):
        out = sum(np.roll(out, s, axis=axis) for s in range(-(k // 2), k // 2 + 1)) / k
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- full-reference -------------------------------------------------------------------------------


def test_y_channel_is_bt601_studio_range():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(img), [[16.0, 235.0, 16 + 65.481]], atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(img.astype(np.float32) / 255), rgb_to_y(img), atol=1e-4)


def test_psnr_y_identical_is_inf_and_offset_matches_formula():
    a = np.clip(_photo_like(), 0, 240)
    assert psnr_y(a, a.copy()) == math.inf
    b = a + np.uint8(10)  # a uniform RGB offset moves Y by 10 * 219/255 (no clipping: a <= 240)
    assert psnr_y(a, b) == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-9)
    assert psnr_y(a, b) == pytest.approx(psnr_y(b, a), abs=1e-12)


def test_psnr_y_ignores_chroma_only_changes():
    a = _photo_like() / 255.0 * 0.8 + 0.1
    b = a.copy()
    b[..., 0] += 24.966 / 2550  # R and B moved against each other with Y unchanged
    b[..., 2] -= 65.481 / 2550
    assert psnr_y(a, b) > 200
    assert psnr(a * 255, b * 255) < 60  # while the RGB channels clearly differ


def test_ssim_y_identical_symmetric_and_monotone():
    a = _photo_like()
    assert ssim_y(a, a.copy()) == pytest.approx(1.0, abs=1e-12)
    mild, strong = _box_blur(a, 3), _box_blur(a, 7)
    s_mild, s_strong = ssim_y(a, mild), ssim_y(a, strong)
    assert 1.0 > s_mild > s_strong
    assert ssim_y(mild, a) == pytest.approx(s_mild, abs=1e-12)


def test_ssim_of_constant_planes_matches_closed_form():
    # sigma = 0 everywhere, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    m1, m2, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    got = ssim(np.full((20, 13), m1), np.full((20, 13), m2))
    assert got == pytest.approx((2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1), rel=1e-12)


def test_fullref_input_errors():
    a = _photo_like()
    with pytest.raises(InputError, match="differ in shape"):
        psnr_y(a, a[:-1])
    with pytest.raises(InputError, match=r"expected finite values in \[0,1\]"):
        ssim_y(a / 127.5, a / 255.0)
    with pytest.raises(InputError, match="H, W >= 11"):
        ssim_y(a[:10], a[:10])
    with pytest.raises(InputError, match="dtype int32"):
        lsd_y(a.astype(np.int32), a.astype(np.int32))


def test_lsd_y_zero_symmetric_shift_invariant_and_monotone():
    a = _photo_like()
    assert lsd_y(a, a.copy()) == 0.0
    # a circular shift changes only the phase of the spectrum
    assert lsd_y(a, np.roll(a, (5, -3), axis=(0, 1))) < 1e-6
    mild, strong = _box_blur(a, 3), _box_blur(a, 7)
    assert 0 < lsd_y(a, mild) < lsd_y(a, strong)
    assert lsd_y(mild, a) == pytest.approx(lsd_y(a, mild), abs=1e-12)


# --- NIQE building blocks (no assets needed) ------------------------------------------------------


def test_matlab_rgb2gray_weights_and_rounding():
    img = np.array([[[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # MATLAB: 76, 150, 29 for pure R, G, B (0.298936·255 = 76.23, 0.587043·255 = 149.70, 0.114021·255 = 29.08)
    np.testing.assert_array_equal(matlab_rgb2gray(img), [[255, 76, 150, 29, 18]])


def test_fspecial_gaussian_normalised_and_symmetric():
    w = fspecial_gaussian(7, 7 / 6)
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert w[3, 3] == w.max()


def test_matlab_imresize_half_keeps_constants_and_linear_ramps():
    assert np.allclose(matlab_imresize(np.full((24, 30), 7.0), 0.5), 7.0, atol=1e-12)
    cols = np.tile(np.arange(1, 41, dtype=np.float64), (16, 1))  # value = 1-based column index
    out = matlab_imresize(cols, 0.5)
    assert out.shape == (8, 20)
    # cubic kernels reproduce linear functions: output j samples the input at u = 2j - 0.5
    j = np.arange(1, 21)
    np.testing.assert_allclose(out[:, 3:-3], np.tile(2 * j - 0.5, (8, 1))[:, 3:-3], atol=1e-9)


@pytest.mark.parametrize(("sampler", "alpha"), [("normal", 2.0), ("laplace", 1.0)])
def test_aggd_fit_recovers_shape_and_scale(sampler, alpha):
    rng = np.random.default_rng(0)
    x = getattr(rng, sampler)(0.0, 1.0, 200_000)
    got_alpha, beta_l, beta_r = _aggd(x)
    assert got_alpha == pytest.approx(alpha, abs=0.05)
    # beta = std·sqrt(Γ(1/α)/Γ(3/α)): sqrt(2)·1 for N(0,1), 1 for Laplace(b=1)
    expected_beta = math.sqrt(2) if sampler == "normal" else 1.0
    assert beta_l == pytest.approx(expected_beta, rel=0.03)
    assert beta_r == pytest.approx(expected_beta, rel=0.03)


def test_niqe_refuses_small_or_odd_inputs(tmp_path):
    with pytest.raises(InputError, match="H, W >= 96"):
        niqe(np.zeros((95, 200, 3), np.uint8), cache_dir=tmp_path)
    with pytest.raises(InputError, match="dtype uint16"):
        niqe(np.zeros((100, 100), np.uint16), cache_dir=tmp_path)


# --- with the pristine model and the published TID2013 pairs (need PyPI) ---------------------------


@pytest.fixture(scope="session")
def niqe_cache(tmp_path_factory):
    src = tmp_path_factory.mktemp("basicsr_src")
    try:
        pip_download(ASSETS["niqe_pris_params"].requirement, src)
    except AssetFetchError as err:
        pytest.skip(f"PyPI unavailable: {err}")
    cache = tmp_path_factory.mktemp("niqe_cache")
    fetch_assets(cache, ["niqe_pris_params"], source_dir=src)
    return cache


def test_pristine_model_file(niqe_cache):
    with np.load(asset_path("niqe_pris_params", niqe_cache)) as data:
        assert data["mu_pris_param"].shape == (1, 36) and data["cov_pris_param"].shape == (36, 36)
        np.testing.assert_allclose(fspecial_gaussian(7, 7 / 6), data["gaussian_window"], atol=1e-15)


def test_niqe_matches_matlab_release(niqe_cache, tid_pairs):
    got = [niqe(dist, cache_dir=niqe_cache) for dist, _ in tid_pairs.values()]
    np.testing.assert_allclose(got, NIQE_MATLAB, atol=0.15)


def test_niqe_input_forms_agree_and_flat_is_refused(niqe_cache, tid_pairs):
    dist = tid_pairs["I08"][0][:192, :288]
    as_uint8 = niqe(dist, cache_dir=niqe_cache)
    assert niqe(dist / 255.0, cache_dir=niqe_cache) == as_uint8
    assert niqe(matlab_rgb2gray(dist), cache_dir=niqe_cache) == as_uint8
    # only whole 96-px blocks count: extra rows/cols beyond them change nothing
    assert niqe(tid_pairs["I08"][0][:200, :300], cache_dir=niqe_cache) == as_uint8
    with pytest.raises(InputError, match="flat"):
        niqe(np.full((96, 96, 3), 90, np.uint8), cache_dir=niqe_cache)


def test_ssim_and_psnr_cores_match_published_values(tid_pairs):
    """The SSIM/PSNR code paths reproduce the reference implementations on real images."""
    ssim_gray = [ssim(matlab_rgb2gray(d).astype(float), matlab_rgb2gray(r).astype(float)) for d, r in tid_pairs.values()]
    psnr_rgb = [psnr(d.astype(float), r.astype(float)) for d, r in tid_pairs.values()]
    assert [round(v, 4) for v in ssim_gray] == list(SSIM_GRAY_MATLAB)
    assert [round(v, 2) for v in psnr_rgb] == list(PSNR_RGB)
    for d, r in tid_pairs.values():  # the Y variants on the same pairs stay in range
        assert 0 < ssim_y(d, r) < 1 and 0 < psnr_y(d, r) < math.inf and lsd_y(d, r) > 0
