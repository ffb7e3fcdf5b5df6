"""Full-reference metrics on the BT.601 luma channel (SPEC §6): PSNR, SSIM, log-spectral distance.

Images are (H,W,3) RGB numpy arrays: uint8 (0..255), uint16 (0..65535) or float in [0,1].
Y is MATLAB's ``rgb2ycbcr`` luma, Y = 16 + 65.481 R + 128.553 G + 24.966 B with RGB in [0,1],
kept in float (not rounded) on the [0,255] scale, as basicsr's ``calculate_psnr/ssim(test_y_channel)``
use it. No border is cropped. :func:`psnr` is the package's one PSNR (gtasr-check, the fp16 export
check and training validation import it); SSIM needs scipy (the ``eval`` extra), imported when used.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_SSIM_SIZE, _SSIM_SIGMA = 11, 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
LSD_EPS = 1e-8  # absolute floor on |FFT| of Y in [0,255]; only zero bins ever reach it (-160 dB)


def to_unit_float(img: np.ndarray, *, name: str = "image") -> np.ndarray:
    """uint8/uint16/float array -> float64 in [0,1]; floats outside [0,1] are refused."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    if img.dtype.kind == "f":
        out = img.astype(np.float64)
        if out.size and (not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0):
            raise InputError(
                f"{name}: float values span [{np.nanmin(out):.4g}, {np.nanmax(out):.4g}]; expected finite values in [0,1]"
            )
        return out
    raise InputError(f"{name}: dtype {img.dtype} is not supported; expected uint8, uint16 or float in [0,1]")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H,W,3) RGB -> (H,W) float64 BT.601 luma on the [0,255] scale (16..235 for in-gamut input)."""
    rgb = to_unit_float(img)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"image: shape {rgb.shape}; expected (H,W,3) RGB")
    return 16.0 + rgb @ _Y_WEIGHTS


def _pair_y(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(a) != np.shape(b):
        raise InputError(f"images differ in shape: {np.shape(a)} vs {np.shape(b)}; expected equal (H,W,3)")
    return rgb_to_y(a), rgb_to_y(b)


def psnr(a: np.ndarray, b: np.ndarray, *, peak: float = 255.0) -> float:
    """PSNR in dB of two same-shape float arrays on a [0, peak] scale; inf when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of the Y channels of two RGB images, peak 255; inf when the Y channels match."""
    return psnr(*_pair_y(a, b))


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation keeping only 'valid' outputs (no padded pixel involved)."""
    from scipy.ndimage import correlate1d  # optional (eval extra): PSNR must not need it

    r = len(g) // 2
    out = correlate1d(correlate1d(img, g, axis=0, mode="constant"), g, axis=1, mode="constant")
    return out[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray, *, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004) of two (H,W) float planes on a [0, peak] scale.

    11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03, statistics over 'valid' windows only
    (H, W >= 11), as the reference MATLAB ``ssim_index`` and basicsr's ``calculate_ssim``.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"SSIM planes: got {a.shape} and {b.shape}; expected equal (H,W) with H, W >= {_SSIM_SIZE}")
    if min(a.shape) < _SSIM_SIZE:  # no whole window fits
        raise InputError(f"SSIM: image of {a.shape[1]}x{a.shape[0]} px is too small; expected H, W >= "
                         f"{_SSIM_SIZE} (the Gaussian window)")
    g = _gaussian_1d(_SSIM_SIZE, _SSIM_SIGMA)
    c1, c2 = (_SSIM_K1 * peak) ** 2, (_SSIM_K2 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a * mu_a
    var_b = _filter_valid(b * b, g) - mu_b * mu_b
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the Y channels of two RGB images (each side >= 11 px); 1.0 when identical."""
    return ssim(*_pair_y(a, b))


def lsd_y(a: np.ndarray, b: np.ndarray) -> float:
    """Log-spectral distance (dB) between the Y channels of two RGB images; 0 when identical.

    sqrt(mean_k (20 log10(|A_k| + eps) - 20 log10(|B_k| + eps))^2) over all 2-D DFT bins k of the
    Y planes on the [0,255] scale, eps = LSD_EPS (absolute). Non-negative and symmetric; it ignores
    phase, so it measures how far the frequency content (e.g. lost or invented texture) differs.
    """
    ya, yb = _pair_y(a, b)
    la = 20.0 * np.log10(np.abs(np.fft.fft2(ya)) + LSD_EPS)
    lb = 20.0 * np.log10(np.abs(np.fft.fft2(yb)) + LSD_EPS)
    return float(np.sqrt(np.mean((la - lb) ** 2)))
