"""NIQE, the no-reference "Natural Image Quality Evaluator" (Mittal et al., IEEE SPL 2013).

The computation follows the official MATLAB release step by step (as BasicSR's re-implementation does,
which matches MATLAB to about 1e-6): 96x96 blocks without overlap, two scales (the second a MATLAB-style
bicubic half-size resize with antialiasing), 18 AGGD features per block and scale, and the Mahalanobis-like
distance between the image's multivariate Gaussian and the pristine one. Lower is better.

The pristine model (mu 1x36, cov 36x36, the 7x7 Gaussian window) is the official one, shipped with this
package as ``ast_model/assets/niqe_pris_params.npz`` (from BasicSR 1.4.2, see ``NOTICE-niqe.md``); it is
read from the installed package, never downloaded.

Everything is float64, as MATLAB computes. BasicSR works in float32 and differs by about 1e-6 on textured
images, but by up to about 1e-2 on images with large flat (e.g. saturated) areas: there the normalised
values ``(I - mu) / (sigma + 1)`` are pure rounding noise whose signs steer the AGGD fits, so scores of
such images depend on floating-point details of every implementation, MATLAB's included.

Callers normally use :func:`ast_model.eval.metrics.niqe`, which takes an RGB image and computes its Y;
this module works on the luminance plane.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import warnings

import numpy as np
import scipy.ndimage
import scipy.sparse
from scipy.special import gamma

__all__ = ["BLOCK_SIZE", "niqe_luma", "pristine_params"]

BLOCK_SIZE = 96  # the official recommendation; the pristine model was fitted on 96x96 patches
_PARAMS_ASSET = "niqe_pris_params.npz"
# (vertical, horizontal) neighbours whose pairwise products are modelled (Eq. 8); MATLAB uses
# circshift by [0 1; 1 0; 1 1; -1 1] -- [1, -1] pairs exactly the same pixels as [-1, 1].
_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@functools.lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official pristine NIQE model shipped with the package.

    Returns:
        ``(mu, cov, window)``: mean ``(36,)``, covariance ``(36, 36)`` and the 7x7 Gaussian window used
        for local normalisation, all float64. Read-only arrays (they are cached).
    """
    resource = importlib.resources.files("ast_model") / "assets" / _PARAMS_ASSET
    with resource.open("rb") as fh, np.load(fh) as data:
        mu = data["mu_pris_param"].reshape(-1)
        cov = data["cov_pris_param"]
        window = data["gaussian_window"]
    for arr in (mu, cov, window):
        arr.setflags(write=False)
    return mu, cov, window


@functools.lru_cache(maxsize=1)
def _aggd_lookup() -> tuple[np.ndarray, np.ndarray]:
    """The shape grid 0.2:0.001:10 and r(gamma) = G(2/g)^2 / (G(1/g) G(3/g)), as in the MATLAB code."""
    shapes = np.linspace(0.2, 10.0, 9801)
    ratio = gamma(2.0 / shapes) ** 2 / (gamma(1.0 / shapes) * gamma(3.0 / shapes))
    return shapes, ratio


def _aggd_params(values: np.ndarray) -> tuple[float, float, float]:
    """Fit an asymmetric generalised Gaussian by moment matching (Eq. 7; MATLAB ``estimateaggdparam``).

    Args:
        values: samples of any shape.

    Returns:
        ``(alpha, beta_left, beta_right)``. A side without samples (a flat block) gives NaN betas and,
        as MATLAB's ``min`` over an all-NaN vector returns index 1, alpha = 0.2; the caller then drops
        the block as MATLAB's ``nanmean``/``nancov`` do.
    """
    x = values.reshape(-1)
    shapes, ratio = _aggd_lookup()
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty side -> NaN, by design
        left_std = math.sqrt(np.mean(x[x < 0] ** 2))
        right_std = math.sqrt(np.mean(x[x > 0] ** 2))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
        r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = float(shapes[np.argmin((ratio - r_hat_norm) ** 2)])
    scale = math.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left_std * scale, right_std * scale


def _block_features(block: np.ndarray) -> list[float]:
    """The 18 NIQE features of one normalised block (MATLAB ``computefeature``)."""
    alpha, beta_l, beta_r = _aggd_params(block)
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in _NEIGHBOUR_SHIFTS:
        # np.roll wraps around like MATLAB's circshift, so border pixels pair with the opposite edge.
        alpha, beta_l, beta_r = _aggd_params(block * np.roll(block, shift, axis=(0, 1)))
        mean = (beta_r - beta_l) * gamma(2.0 / alpha) / gamma(1.0 / alpha)
        features += [alpha, mean, beta_l, beta_r]
    return features


def _imresize_matrix(n_in: int, scale: float) -> scipy.sparse.csr_matrix:
    """The (n_out, n_in) operator of MATLAB ``imresize`` (bicubic, antialiased) along one axis.

    No library reproduces MATLAB's resize (Pillow and scikit-image treat borders and antialiasing
    differently), and NIQE's second scale depends on it. MATLAB widens the cubic kernel by 1/scale when
    shrinking, normalises each row, and mirrors out-of-range taps symmetrically (edge pixel repeated);
    duplicate (row, column) taps are summed by the sparse constructor.
    """
    n_out = math.ceil(n_in * scale)
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1 - 1 / scale)  # output centres in 1-based input coords
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2)[None, :]  # (n_out, P), 1-based
    dist = np.abs(u[:, None] - taps) * min(scale, 1.0)
    cubic = np.where(
        dist <= 1,
        1.5 * dist**3 - 2.5 * dist**2 + 1,
        np.where(dist <= 2, -0.5 * dist**3 + 2.5 * dist**2 - 4 * dist + 2, 0.0),
    )
    weights = cubic / cubic.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])  # symmetric, edge repeated
    cols = mirror[np.mod(taps.astype(np.int64) - 1, 2 * n_in)]
    rows = np.repeat(np.arange(n_out), taps.shape[1])
    return scipy.sparse.csr_matrix((weights.ravel(), (rows, cols.ravel())), shape=(n_out, n_in))


def _imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiased) of a 2-D float array."""
    h, w = image.shape
    rows = _imresize_matrix(h, scale) @ image  # (h', w)
    return np.asarray((_imresize_matrix(w, scale) @ rows.T).T)  # (h', w')


def niqe_luma(luma: np.ndarray, *, block_size: int = BLOCK_SIZE) -> float:
    """NIQE of a luminance plane.

    Args:
        luma: ``(H, W)`` array, luminance on the 0-255 scale (MATLAB rounds Y to integers before NIQE;
            :func:`ast_model.eval.metrics.niqe` does that). The image is cropped to whole blocks.
        block_size: side of the square blocks (the pristine model was fitted with 96).

    Returns:
        The NIQE score (lower is more natural); NaN when no block has texture (a flat image).

    Raises:
        ValueError: not 2-D, or smaller than two blocks (a covariance needs two samples).
    """
    if luma.ndim != 2:
        raise ValueError(f"niqe_luma expects an (H, W) luminance plane, got shape {luma.shape}")
    n_h, n_w = luma.shape[0] // block_size, luma.shape[1] // block_size
    if n_h * n_w < 2:
        raise ValueError(
            f"NIQE needs at least two {block_size}x{block_size} blocks; the image is {luma.shape[0]}x{luma.shape[1]}"
        )
    mu_pris, cov_pris, window = pristine_params()
    image = np.asarray(luma, dtype=np.float64)[: n_h * block_size, : n_w * block_size]

    per_scale = []
    for scale in (1, 2):
        # Local mean/contrast normalisation (Eq. 1); MATLAB imfilter(..., 'replicate') = mode 'nearest'.
        mu = scipy.ndimage.correlate(image, window, mode="nearest")
        sigma = np.sqrt(np.abs(scipy.ndimage.correlate(image * image, window, mode="nearest") - mu * mu))
        normalised = (image - mu) / (sigma + 1)
        b = block_size // scale
        # Column-major block order, as MATLAB's blkproc; both scales use the same order so that row k
        # of the feature matrix describes the same block at both scales.
        per_scale.append(
            [
                _block_features(normalised[i * b : (i + 1) * b, j * b : (j + 1) * b])
                for j in range(n_w)
                for i in range(n_h)
            ]
        )
        if scale == 1:
            image = _imresize(image, 0.5)
    features = np.concatenate([np.asarray(f) for f in per_scale], axis=1)  # (blocks, 36)

    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        return math.nan
    mu_dist = np.nanmean(features, axis=0)
    cov_dist = np.cov(complete, rowvar=False)
    # MATLAB pinv's default tolerance: max(size) * eps relative to the largest singular value.
    inv = np.linalg.pinv((cov_pris + cov_dist) / 2, rtol=max(cov_pris.shape) * np.finfo(np.float64).eps)
    diff = mu_pris - mu_dist
    return float(np.sqrt(diff @ inv @ diff))
