"""The project's one implementation of PSNR, SSIM and NIQE (docs/data.md#metrics).

Images are ``(H, W, 3)`` RGB arrays, either ``uint8`` (0-255) or floating point in ``[0, 1]``; the two
images of a pair may differ in dtype (a float model output against a uint8 target). Everything is
computed in float64 on the 0-255 scale, so the constants match MATLAB/BasicSR (data range 255).

Protocols (say which one a table used):

``"float"`` (default; BasicSR style)
    Unrounded values. Y is BT.601 studio range, ``16 + 65.481 R + 128.553 G + 24.966 B`` for R, G, B in
    [0, 1] (``skimage.color.rgb2ycbcr``). SSIM is Wang et al.'s: 11x11 Gaussian window, sigma 1.5,
    K = (0.01, 0.03), population covariances, "valid" region (what BasicSR computes).
``"matlab"``
    What the MATLAB script ``evaluate_PSNR_SSIM.m`` reports on saved 8-bit PNGs (the SPAD numbers): RGB is
    quantised to uint8 as saving a PNG does, and Y is rounded to uint8 as MATLAB's ``rgb2ycbcr`` on uint8
    does (about -0.5 dB at 47 dB PSNR_Y). SSIM as in "float", on the rounded values.
``"skimage"``
    The official AST test scripts for AGAN-Data and Dense-Haze (docs/recipes.md#test-protocols): unrounded float,
    SSIM with scikit-image's defaults (7x7 uniform window, sample covariances). PSNR equals "float".

``crop_border`` removes that many pixels from every side before scoring (0 for all three AST tasks).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ast_model.eval.niqe import niqe_luma

__all__ = ["PROTOCOLS", "Protocol", "niqe", "psnr", "rgb_to_y", "ssim"]

Protocol = Literal["float", "matlab", "skimage"]
PROTOCOLS: tuple[str, ...] = ("float", "matlab", "skimage")
_DATA_RANGE = 255.0
_RANGE_TOL = 1e-6  # float images may overshoot [0, 1] by rounding noise, not more
_GAUSSIAN_SIGMA = 1.5  # -> an 11x11 window in skimage (radius int(3.5 * 1.5 + 0.5) = 5)


def _to_255(image: np.ndarray, name: str) -> np.ndarray:
    """Validate one ``(H, W, 3)`` image and return it as float64 on the 0-255 scale."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = " (channel-first? transpose to (H, W, 3))" if arr.ndim == 3 and arr.shape[0] == 3 else ""
        raise ValueError(f"{name}: expected an (H, W, 3) RGB image, got shape {arr.shape}{hint}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name}: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name}: contains NaN or infinity")
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name}: float images must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]"
            " (uint8 data stored as float? divide by 255)"
        )
    return np.clip(arr.astype(np.float64), 0.0, 1.0) * _DATA_RANGE


def rgb_to_y(image: np.ndarray, *, rounded: bool = False) -> np.ndarray:
    """BT.601 luma of an RGB image (what "Y channel" metrics use).

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        rounded: round to integers, as MATLAB's ``rgb2ycbcr`` on uint8 images does.

    Returns:
        ``(H, W)`` float64 luma on the 0-255 scale, in [16, 235].
    """
    rgb = _to_255(image, "image")
    return _luma(rgb, rounded)


def _crop(image: np.ndarray, crop_border: int) -> np.ndarray:
    """Remove ``crop_border`` pixels from every side of an ``(H, W, ...)`` array."""
    if not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    h, w = image.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    return image[crop_border : h - crop_border, crop_border : w - crop_border]


def _luma(rgb255: np.ndarray, rounded: bool) -> np.ndarray:
    y = rgb2ycbcr(rgb255 / _DATA_RANGE)[..., 0]  # (H, W), already on the 0-255 scale
    return np.rint(y) if rounded else y


def _prepare(
    restored: np.ndarray, target: np.ndarray, y_channel: bool, crop_border: int, protocol: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair and return both as float64 0-255 arrays, ``(H, W)`` for Y else ``(H, W, 3)``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    a, b = _to_255(restored, "restored"), _to_255(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: restored {a.shape} vs target {b.shape}")
    a, b = _crop(a, crop_border), _crop(b, crop_border)
    matlab = protocol == "matlab"
    if matlab:
        # Quantise as writing an 8-bit PNG does (skimage.img_as_ubyte rounds half to even, as rint).
        a, b = np.rint(a), np.rint(b)
    if y_channel:
        a, b = _luma(a, matlab), _luma(b, matlab)
    return a, b


def psnr(
    restored: np.ndarray,
    target: np.ndarray,
    *,
    y_channel: bool = False,
    crop_border: int = 0,
    protocol: Protocol = "float",
) -> float:
    """Peak signal-to-noise ratio, in dB, with peak 255 (equivalently 1 for [0, 1] images).

    Args:
        restored: ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        target: the reference, same shape; uint8 or float in [0, 1].
        y_channel: score the BT.601 luma instead of the three RGB channels.
        crop_border: pixels removed from every side first.
        protocol: ``"float"``, ``"matlab"`` or ``"skimage"`` (see the module docstring).

    Returns:
        PSNR in dB; ``inf`` for identical images.

    Raises:
        ValueError: wrong layout, shapes differ, values outside [0, 1], bad crop or protocol.
        TypeError: an unsupported dtype.
    """
    a, b = _prepare(restored, target, y_channel, crop_border, protocol)
    if np.array_equal(a, b):
        return float("inf")  # MSE 0; skimage would divide by zero with a warning
    return float(peak_signal_noise_ratio(b, a, data_range=_DATA_RANGE))


def ssim(
    restored: np.ndarray,
    target: np.ndarray,
    *,
    y_channel: bool = False,
    crop_border: int = 0,
    protocol: Protocol = "float",
) -> float:
    """Structural similarity, the mean over the valid region (and over channels for RGB).

    Args:
        restored: ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        target: the reference, same shape; uint8 or float in [0, 1].
        y_channel: score the BT.601 luma instead of the three RGB channels.
        crop_border: pixels removed from every side first.
        protocol: ``"float"``/``"matlab"``: 11x11 Gaussian window (sigma 1.5), K = (0.01, 0.03),
            population covariances (Wang et al.); ``"skimage"``: 7x7 uniform window, sample covariances.

    Returns:
        SSIM in [-1, 1]; 1 for identical images.

    Raises:
        ValueError: as :func:`psnr`, or an image (after cropping) smaller than the window
            (11x11, or 7x7 for "skimage").
        TypeError: an unsupported dtype.
    """
    a, b = _prepare(restored, target, y_channel, crop_border, protocol)
    if protocol == "skimage":
        options: dict = {}
        window = 7
    else:
        options = dict(gaussian_weights=True, sigma=_GAUSSIAN_SIGMA, use_sample_covariance=False)
        window = 11
    if min(a.shape[:2]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {a.shape[0]}x{a.shape[1]}")
    return float(
        structural_similarity(
            b, a, data_range=_DATA_RANGE, channel_axis=None if y_channel else -1, K1=0.01, K2=0.03, **options
        )
    )


def niqe(image: np.ndarray, *, crop_border: int = 0) -> float:
    """NIQE (no-reference; lower is more natural) with the official pristine parameters.

    Computed on the BT.601 luma rounded to integers, 96x96 blocks, as BasicSR's ``calculate_niqe``
    (``convert_to='y'``), which reproduces the official MATLAB code (see :mod:`ast_model.eval.niqe`).

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in [0, 1]; at least two 96x96 blocks after cropping.
        crop_border: pixels removed from every side first.

    Returns:
        The NIQE score; NaN for an image without texture.

    Raises:
        ValueError: wrong layout or range, bad crop, or an image smaller than two 96x96 blocks.
        TypeError: an unsupported dtype.
    """
    rgb = _crop(_to_255(image, "image"), crop_border)
    # MATLAB (and BasicSR) read 8-bit files and round Y; a float image is quantised the same way.
    return niqe_luma(_luma(np.rint(rgb), rounded=True))
