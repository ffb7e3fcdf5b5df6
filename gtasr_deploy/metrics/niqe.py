"""NIQE (Mittal, Soundararajan & Bovik 2013), following the authors' MATLAB release (SPEC §6).

Algorithm facts of the release's ``computequality.m`` (the one pyiqa calibrates against):
- gray = MATLAB ``rgb2gray`` on uint8 (rounded to uint8), then double on the [0,255] scale;
- crop to whole 96x96 blocks (top-left kept); two scales, the second from MATLAB
  ``imresize(im, 0.5)`` (bicubic, antialiased, symmetric borders);
- MSCN per scale: mu = imfilter(im, w, 'replicate'), sigma = sqrt(|imfilter(im^2) - mu^2|),
  (im - mu) / (sigma + 1), w = fspecial('gaussian', 7, 7/6);
- per block (96/scale px, no overlap) 18 features: AGGD fit of the MSCN values (alpha, mean of
  the two betas), then for the 4 neighbour products (circshift by [0 1], [1 0], [1 1], [1 -1])
  alpha, (beta_r - beta_l)·Γ(2/α)/Γ(1/α), beta_l, beta_r; alpha by grid search 0.2:0.001:10;
- residuals |im - mu| below float rounding (1e-9 gray levels) are set to exactly 0, the value
  exact arithmetic gives in flat areas (see _scale_features);
- no block selection at test time (the 0.75 sharpness threshold only applies when the pristine
  model is fitted); NaN features are dropped as nanmean/nancov do;
- quality = sqrt((mu_p - mu_d) · pinv((cov_p + cov_d)/2) · (mu_p - mu_d)ᵀ) with the pristine
  model from basicsr 1.4.2's ``niqe_pris_params.npz`` (see assets.py).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from gtasr_deploy.errors import CheckpointError, InputError
from gtasr_deploy.metrics.assets import asset_path

BLOCK = 96
# MATLAB rgb2gray: first row of inv(NTSC RGB->YIQ matrix) = 0.298936, 0.587043, 0.114021.
_NTSC = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
GRAY_WEIGHTS = np.linalg.inv(_NTSC)[0]
_ROUNDING_TOL = 1e-9  # gray levels; float error of a 7x7 mean on [0,255] data is ~1e-12, real detail >> 1e-9
_ALPHAS = 0.2 + 0.001 * np.arange(9801)  # MATLAB 0.2:0.001:10


@lru_cache(maxsize=None)
def _scipy():
    """(scipy.ndimage.correlate, scipy.special.gamma), imported when NIQE first runs: scipy is the
    optional ``eval`` extra, and importing this module (e.g. through gtasr-eval) must not need it."""
    from scipy.ndimage import correlate
    from scipy.special import gamma

    return correlate, gamma


@lru_cache(maxsize=None)
def _r_alpha() -> np.ndarray:
    gamma = _scipy()[1]
    return gamma(2 / _ALPHAS) ** 2 / (gamma(1 / _ALPHAS) * gamma(3 / _ALPHAS))


def matlab_rgb2gray(img: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H,W) uint8 gray, rounded half away from zero as MATLAB does."""
    gray = np.asarray(img, np.float64) @ GRAY_WEIGHTS
    return np.clip(np.floor(gray + 0.5), 0, 255).astype(np.uint8)


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: (size, size) float64 summing to 1."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    return g / g.sum()


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _resize_matrix(n_in: int, scale: float) -> np.ndarray:
    """(n_out, n_in) weights of MATLAB imresize bicubic along one axis, antialiased when shrinking."""
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in 1-based input coordinates
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    # symmetric border: 1..n, n..1 repeated (MATLAB's aux index trick), back to 0-based
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.repeat(np.arange(n_out), idx.shape[1]), cols.ravel()), w.ravel())
    return mat


def matlab_imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic, antialiasing) of an (H,W) float64 plane, no rounding."""
    rows = _resize_matrix(img.shape[0], scale)
    cols = _resize_matrix(img.shape[1], scale)
    return rows @ img @ cols.T


def _aggd(vec: np.ndarray) -> tuple[float, float, float]:
    """(alpha, beta_left, beta_right) of an asymmetric generalised Gaussian fit (moment matching)."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty halves give NaN like MATLAB
        left = math.sqrt(np.mean(vec[vec < 0] ** 2)) if np.any(vec < 0) else math.nan
        right = math.sqrt(np.mean(vec[vec > 0] ** 2)) if np.any(vec > 0) else math.nan
        gam = left / right if right else math.nan
        rhat = np.mean(np.abs(vec)) ** 2 / np.mean(vec * vec)
        rnorm = rhat * (gam**3 + 1) * (gam + 1) / (gam**2 + 1) ** 2
    # MATLAB min() over an all-NaN vector returns index 1, so alpha = 0.2 and the betas stay NaN.
    alpha = _ALPHAS[0] if math.isnan(rnorm) else _ALPHAS[np.argmin((_r_alpha() - rnorm) ** 2)]
    gamma = _scipy()[1]
    ratio = math.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return float(alpha), left * ratio, right * ratio


def _block_features(mscn: np.ndarray) -> list[float]:
    gamma = _scipy()[1]
    alpha, bl, br = _aggd(mscn.ravel())
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        pair = mscn * np.roll(mscn, shift, axis=(0, 1))  # MATLAB circshift within the block
        alpha, bl, br = _aggd(pair.ravel())
        feats += [alpha, (br - bl) * gamma(2 / alpha) / gamma(1 / alpha), bl, br]
    return feats


def _scale_features(img: np.ndarray, block: int) -> np.ndarray:
    """(n_blocks, 18) features of one scale; blocks in MATLAB column-major order."""
    correlate = _scipy()[0]
    window = fspecial_gaussian(7, 7 / 6)
    mu = correlate(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(correlate(img * img, window, mode="nearest") - mu * mu))
    centred = img - mu
    # Exact arithmetic gives 0 in flat (and linear-ramp) neighbourhoods; float filtering leaves
    # ±1e-14 noise there whose sign decides which AGGD tail a pixel joins. Left alone it moves NIQE
    # by ~0.5 on images with flat areas (TID2013 I19: 9.13 vs MATLAB 8.64; snapped: 8.67).
    centred[np.abs(centred) < _ROUNDING_TOL] = 0.0
    mscn = centred / (sigma + 1)
    rows, cols = img.shape[0] // block, img.shape[1] // block
    return np.array(
        [
            _block_features(mscn[r * block : (r + 1) * block, c * block : (c + 1) * block])
            for c in range(cols)
            for r in range(rows)
        ]
    )


def _pinv(mat: np.ndarray) -> np.ndarray:
    """MATLAB pinv: singular values below max(m,n)·eps(max singular value) are dropped."""
    u, s, vt = np.linalg.svd(mat)
    tol = max(mat.shape) * np.spacing(s.max()) if s.size else 0.0
    s_inv = np.where(s > tol, 1 / np.where(s > tol, s, 1), 0)
    return (vt.T * s_inv) @ u.T


@lru_cache(maxsize=4)
def _pristine(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        try:
            mu, cov = data["mu_pris_param"], data["cov_pris_param"]
        except KeyError as err:
            raise CheckpointError(f"{path}: missing {err}; expected basicsr's niqe_pris_params.npz") from err
    return mu.reshape(-1).astype(np.float64), cov.astype(np.float64)


def niqe_gray(gray: np.ndarray, *, cache_dir: str | Path | None = None) -> float:
    """NIQE of an (H,W) gray plane on the [0,255] scale (H, W >= 96); lower is better."""
    img = np.asarray(gray, np.float64)
    if img.ndim != 2 or min(img.shape) < BLOCK:
        raise InputError(f"NIQE: gray plane of shape {img.shape}; expected (H,W) with H, W >= {BLOCK}")
    mu_p, cov_p = _pristine(str(asset_path("niqe_pris_params", cache_dir)))
    img = img[: img.shape[0] // BLOCK * BLOCK, : img.shape[1] // BLOCK * BLOCK]
    feats = np.hstack([_scale_features(img, BLOCK), _scale_features(matlab_imresize(img, 0.5), BLOCK // 2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu_d = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]  # nancov drops rows holding any NaN
    if len(complete) == 0 or np.isnan(mu_d).any():
        raise InputError("NIQE: every block is flat (no texture to measure); expected a natural image")
    cov_d = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros_like(cov_p)
    diff = mu_p - mu_d
    return float(math.sqrt(diff @ _pinv((cov_p + cov_d) / 2) @ diff))


def niqe(img: np.ndarray, *, cache_dir: str | Path | None = None) -> float:
    """NIQE of an 8-bit image: (H,W,3) RGB or (H,W) gray, uint8 or float in [0,1] (rounded to 8 bit).

    RGB goes through MATLAB's rgb2gray, as the published values are computed. H, W >= 96.
    """
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError("NIQE: float image outside [0,1]; expected uint8 or float in [0,1]")
        arr = np.floor(arr * 255 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputError(f"NIQE: dtype {arr.dtype}; expected uint8 or float in [0,1] (NIQE is defined on 8-bit images)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = matlab_rgb2gray(arr)
    elif arr.ndim != 2:
        raise InputError(f"NIQE: image of shape {arr.shape}; expected (H,W,3) RGB or (H,W) gray")
    return niqe_gray(arr, cache_dir=cache_dir)
