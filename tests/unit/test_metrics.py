"""PSNR / SSIM / NIQE against independent computations (ast_model.eval.metrics, ast_model.eval.niqe)."""

from __future__ import annotations

import hashlib
import importlib.resources
import math

import numpy as np
import pytest
import scipy.signal
import skimage.data
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from ast_model.eval import metrics
from ast_model.eval.metrics import niqe, psnr, rgb_to_y, ssim

NIQE_PARAMS_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
# NIQE of skimage.data.chelsea() (300x451 RGB, 12 blocks) with our float64 implementation. Validated by
# running BasicSR 1.4.2's own niqe.py (from its sdist) on the same Y plane: equal to 2e-14 once its
# float32 MATLAB-imresize is switched to float64, and 2.62552438 (diff 2.3e-6) with its stock float32
# pipeline. BasicSR reports MATLAB = 5.72957338 vs its code 5.7295763 on baboon (same precision gap).
CHELSEA_NIQE = 2.6255266797


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A float target and a noisy float restoration, (32, 40, 3) in [0, 1]."""
    rng = np.random.default_rng(0)
    target = rng.random((32, 40, 3))
    restored = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
    return restored, target


def _independent_y(rgb01: np.ndarray) -> np.ndarray:
    """BT.601 studio-range Y on the 0-255 scale, written out (docs/data.md#y-channel)."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    return 16 + 65.481 * r + 128.553 * g + 24.966 * b


def _independent_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / mse)


def _wang_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM_index.m: 11x11 Gaussian (sigma 1.5) window, 'valid' filtering, L = 255."""
    ax = np.arange(11) - 5
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    win = g / g.sum()

    def f(x: np.ndarray) -> np.ndarray:
        return scipy.signal.correlate2d(x, win, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


# ---------------------------------------------------------------------------------------------- PSNR / SSIM
@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
@pytest.mark.parametrize("y_channel", [False, True])
def test_identical_images_give_inf_psnr_and_ssim_one(protocol: str, y_channel: bool) -> None:
    image = np.random.default_rng(1).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    for img in (image, image / 255.0):
        assert psnr(img, img, y_channel=y_channel, protocol=protocol) == math.inf
        assert ssim(img, img, y_channel=y_channel, protocol=protocol) == pytest.approx(1.0, abs=1e-12)


def test_known_mse_gives_its_psnr() -> None:
    target = np.full((16, 16, 3), 100, np.uint8)
    restored = target + np.uint8(10)  # every value off by 10 -> MSE 100
    expected = 10 * math.log10(255**2 / 100)  # 28.1308 dB
    assert psnr(restored, target) == pytest.approx(expected, abs=1e-12)
    # the same pair as float [0, 1]
    assert psnr(restored / 255.0, target / 255.0) == pytest.approx(expected, abs=1e-9)
    # mixed dtypes: float output against a uint8 target
    assert psnr(restored / 255.0, target) == pytest.approx(expected, abs=1e-9)


def test_crop_border_ignores_the_border() -> None:
    target = np.full((20, 20, 3), 0.5)
    restored = target.copy()
    restored[:2] = 0.0
    restored[:, -2:] = 1.0
    assert psnr(restored, target) < 20
    assert psnr(restored, target, crop_border=2) == math.inf
    assert ssim(restored, target, crop_border=2) == pytest.approx(1.0)


def test_rgb_psnr_and_ssim_match_independent_computations(pair) -> None:
    restored, target = pair
    assert psnr(restored, target) == pytest.approx(_independent_psnr(restored * 255, target * 255), abs=1e-9)
    expected = np.mean([_wang_ssim(restored[..., c] * 255, target[..., c] * 255) for c in range(3)])
    assert ssim(restored, target) == pytest.approx(expected, abs=1e-10)


def test_y_matches_skimage_rgb2ycbcr_and_the_bt601_formula(pair) -> None:
    restored, _ = pair
    y = rgb_to_y(restored)
    np.testing.assert_allclose(y, rgb2ycbcr(restored)[..., 0], atol=1e-12)
    np.testing.assert_allclose(y, _independent_y(restored), atol=1e-10)
    assert rgb_to_y(restored, rounded=True).dtype == np.float64
    np.testing.assert_array_equal(rgb_to_y(restored, rounded=True), np.rint(y))


def test_float_protocol_y_scores_are_unrounded(pair) -> None:
    restored, target = pair
    ya, yb = _independent_y(restored), _independent_y(target)
    assert psnr(restored, target, y_channel=True) == pytest.approx(_independent_psnr(ya, yb), abs=1e-9)
    assert ssim(restored, target, y_channel=True) == pytest.approx(_wang_ssim(ya, yb), abs=1e-10)


def test_matlab_protocol_rounds_rgb_to_uint8_and_y_to_integers(pair) -> None:
    restored, target = pair
    # What MATLAB sees: the saved 8-bit PNG, then rgb2ycbcr on uint8 (Y rounded).
    ya = np.rint(_independent_y(np.rint(restored * 255) / 255))
    yb = np.rint(_independent_y(np.rint(target * 255) / 255))
    got = psnr(restored, target, y_channel=True, protocol="matlab")
    assert got == pytest.approx(_independent_psnr(ya, yb), abs=1e-9)
    assert got != pytest.approx(psnr(restored, target, y_channel=True, protocol="float"), abs=1e-3)
    assert ssim(restored, target, y_channel=True, protocol="matlab") == pytest.approx(_wang_ssim(ya, yb), abs=1e-10)


def test_matlab_rounding_costs_psnr_at_high_quality() -> None:
    # docs/data.md#matlab-parity: rounding Y lowers PSNR_Y by ~0.5 dB near 47 dB; unrounded "float" must not lose it.
    rng = np.random.default_rng(3)
    target = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    restored = np.clip(target / 255.0 + rng.normal(0, 0.0078, target.shape), 0, 1)
    float_y = psnr(restored, target, y_channel=True, protocol="float")
    matlab_y = psnr(restored, target, y_channel=True, protocol="matlab")
    assert 45 < float_y < 49
    assert 0.2 < float_y - matlab_y < 1.0


def test_skimage_protocol_is_the_official_ast_test_script_call(pair) -> None:
    restored, target = pair
    official = structural_similarity(target, restored, channel_axis=2, data_range=1)  # test_raindrop.py
    assert ssim(restored, target, protocol="skimage") == pytest.approx(official, abs=1e-12)
    assert ssim(restored, target, protocol="skimage") != pytest.approx(ssim(restored, target), abs=1e-4)
    assert psnr(restored, target, protocol="skimage") == psnr(restored, target)


@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), ValueError, "shape mismatch"),
        (np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), ValueError, "channel-first"),
        (np.zeros((8, 8)), np.zeros((8, 8)), ValueError, r"\(H, W, 3\)"),
        (np.full((8, 8, 3), 2.0), np.zeros((8, 8, 3)), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan), np.zeros((8, 8, 3)), ValueError, "NaN"),
        (np.zeros((8, 8, 3), np.int16), np.zeros((8, 8, 3), np.int16), TypeError, "dtype"),
    ],
)
def test_bad_inputs_give_clear_errors(a, b, error, match) -> None:
    with pytest.raises(error, match=match):
        psnr(a, b)
    with pytest.raises(error, match=match):
        ssim(a, b)


def test_bad_options_give_clear_errors(pair) -> None:
    restored, target = pair
    with pytest.raises(ValueError, match="protocol"):
        psnr(restored, target, protocol="matlab2")
    with pytest.raises(ValueError, match="crop_border"):
        psnr(restored, target, crop_border=16)
    with pytest.raises(ValueError, match="crop_border"):
        ssim(restored, target, crop_border=-1)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(restored[:10], target[:10])


# ---------------------------------------------------------------------------------------------- NIQE
def test_niqe_parameters_are_the_shipped_official_file() -> None:
    data = (importlib.resources.files("ast_model") / "assets" / "niqe_pris_params.npz").read_bytes()
    assert hashlib.sha256(data).hexdigest() == NIQE_PARAMS_SHA256
    notice = importlib.resources.files("ast_model") / "assets" / "NOTICE-niqe.md"
    assert "Apache" in notice.read_text()


def test_niqe_regression_value() -> None:
    image = skimage.data.chelsea()
    assert niqe(image) == pytest.approx(CHELSEA_NIQE, abs=1e-6)
    # float input is quantised like a saved PNG, so it scores the same
    assert niqe(image / 255.0) == pytest.approx(CHELSEA_NIQE, abs=1e-6)


def test_niqe_rises_with_noise_and_blur() -> None:
    image = skimage.data.chelsea() / 255.0
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.1, image.shape), 0, 1)
    blurred = scipy.ndimage.uniform_filter(image, size=(7, 7, 1))
    assert niqe(noisy) > CHELSEA_NIQE + 2
    assert niqe(blurred) > CHELSEA_NIQE + 2


def test_niqe_needs_two_blocks() -> None:
    with pytest.raises(ValueError, match="two 96x96 blocks"):
        niqe(np.zeros((100, 150, 3), np.uint8))
    assert math.isnan(niqe(np.full((96, 192, 3), 0.5)))  # a flat image has no statistics
