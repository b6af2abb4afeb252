"""Degradation models: deterministic per seed, and each does what it should to the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from ast_model.data import degradations as deg


@pytest.fixture()
def clean() -> np.ndarray:
    """A smooth, mid-grey textured 48x64 image (seeded)."""
    rng = np.random.default_rng(0)
    base = np.linspace(0.2, 0.6, 64)[None, :, None] * np.ones((48, 64, 3))
    return np.clip(base + 0.05 * rng.standard_normal((48, 64, 3)), 0, 1).astype(np.float32)


def _orientation(layers: list[np.ndarray]) -> float:
    """Dominant streak direction in degrees from the horizontal (y up), from the summed structure tensor.

    Layers are smoothed first: finite differences on 1-2 px wide lines are biased towards the diagonals.
    """
    j = np.zeros(3)
    for layer in layers:
        gy, gx = np.gradient(ndimage.gaussian_filter(layer.astype(np.float64), 2.0))
        gy = -gy  # rows grow downwards; the angle convention has y up
        j += [(gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()]
    # Gradients are perpendicular to the streaks: the streaks follow the direction of least variation.
    gradient_angle = 0.5 * math.degrees(math.atan2(2 * j[2], j[0] - j[1]))
    return (gradient_angle + 90.0) % 180.0


@pytest.mark.parametrize(
    ("sample", "apply"),
    [
        (lambda r, img: deg.sample_rain_params(r), lambda img, p: deg.apply_rain(img, p)),
        (lambda r, img: deg.sample_drop_params(r, img.shape[:2]), lambda img, p: deg.apply_drops(img, p)),
        (lambda r, img: deg.sample_haze_params(r), lambda img, p: deg.apply_haze(img, deg.depth_proxy(img), p)),
    ],
    ids=["rain", "raindrop", "haze"],
)
def test_deterministic_per_seed_and_different_across_seeds(clean: np.ndarray, sample, apply) -> None:
    p1, p2, p3 = (sample(np.random.default_rng(s), clean) for s in (7, 7, 8))
    assert p1 == p2 and p1 != p3
    a, b, c = apply(clean, p1), apply(clean, p2), apply(clean, p3)
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("angle", [60.0, 75.0, 90.0, 105.0, 120.0])
def test_streaks_are_oriented_as_configured(angle: float) -> None:
    layers = [
        deg.rain_layer(
            (96, 96), {"density": 0.3, "length": 15, "angle": angle, "width": 0.6, "keep": 0.15, "noise_seed": seed}
        )
        for seed in range(4)
    ]
    measured = _orientation(layers)
    assert abs(measured - angle) < 5.0, (measured, angle)


def test_motion_kernel_is_a_normalised_line() -> None:
    k = deg.motion_kernel(9, 90.0)
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1.0)
    assert (k[:, 4] > 0.05).all() and k[:, :4].sum() + k[:, 5:].sum() < 1e-9  # a vertical line


def test_rain_brightens_and_streaks_are_sparse(clean: np.ndarray) -> None:
    params = deg.sample_rain_params(np.random.default_rng(1), deg.RainRanges(heavy_prob=0.0))
    rainy = deg.apply_rain(clean, params)
    assert np.all(rainy >= clean - 1e-6)  # additive and screen blends only add light
    assert 0.01 < (rainy - clean > 0.02).mean() < 0.5


def test_haze_lowers_contrast_and_brightens_far_regions(clean: np.ndarray) -> None:
    depth = np.repeat(np.linspace(0, 1, 48)[:, None], 64, axis=1).astype(np.float32)  # far at the bottom
    params = {"beta": 1.5, "airlight": [0.95, 0.95, 0.95]}
    hazy = deg.apply_haze(clean, depth, params)
    # Contrast within a row (one depth): lower everywhere, and almost gone where it is far.
    row_contrast = lambda img: img.std(axis=(1, 2))  # noqa: E731
    assert np.all(row_contrast(hazy)[1:] < row_contrast(clean)[1:])
    assert row_contrast(hazy)[-8:].mean() < 0.35 * row_contrast(clean)[-8:].mean()
    lift = (hazy - clean).mean(axis=(1, 2))  # brightening per row
    assert lift[-8:].mean() > lift[:8].mean() + 0.2 and lift[:8].mean() >= -1e-6


def test_raindrops_change_only_inside_drops(clean: np.ndarray) -> None:
    drop = {
        "cy": 20.0,
        "cx": 30.0,
        "radius": 6.0,
        "aspect": 1.0,
        "angle": 0.0,
        "magnification": 2.0,
        "blur": 1.0,
        "feather": 0.3,
    }
    out = deg.apply_drops(clean, {"drops": [drop]})
    ys, xs = np.mgrid[0:48, 0:64]
    outside = (ys - 20) ** 2 + (xs - 30) ** 2 > 7**2
    assert np.array_equal(out[outside], clean[outside])
    assert np.abs(out[~outside] - clean[~outside]).mean() > 0.005


def test_drop_count_within_range(clean: np.ndarray) -> None:
    ranges = deg.DropRanges(count=(3, 4))
    params = deg.sample_drop_params(np.random.default_rng(0), clean.shape[:2], ranges)
    assert 3 <= params["count"] == len(params["drops"]) <= 4


def test_depth_from_disparity_fills_invalid_and_puts_small_disparity_far() -> None:
    disparity = np.tile(np.linspace(40.0, 4.0, 16)[:, None], (1, 8))  # top near (large), bottom far
    disparity[5, 3] = np.inf
    disparity[6, 3] = 0.0
    depth = deg.depth_from_disparity(disparity)
    assert np.isfinite(depth).all() and depth.min() == 0 and depth.max() == 1
    assert np.all(np.diff(depth[:, 0]) > 0)
    assert depth[5, 3] == pytest.approx(depth[5, 2], abs=0.1)


def test_depth_proxy_is_far_at_the_top(clean: np.ndarray) -> None:
    d = deg.depth_proxy(clean)
    assert d.shape == clean.shape[:2] and d[:8].mean() > d[-8:].mean()


def test_randomised_depth_proxy_is_drawn_only_when_asked_and_is_reproducible(clean: np.ndarray) -> None:
    # Default ranges: no "proxy" entry and the same random stream as before, so existing pairs are unchanged.
    assert "proxy" not in deg.sample_haze_params(np.random.default_rng(3))
    ranges = deg.HazeRanges(proxy_tilt=45.0, proxy_field=0.5)
    params = deg.sample_haze_params(np.random.default_rng(3), ranges)
    proxy = params["proxy"]
    assert abs(proxy["tilt"]) <= 45.0 and 0.0 <= proxy["field"] <= 0.5
    d1, d2 = deg.depth_proxy(clean, proxy), deg.depth_proxy(clean, dict(proxy))
    assert np.array_equal(d1, d2) and d1.min() == 0 and d1.max() == 1
    assert not np.allclose(d1, deg.depth_proxy(clean), atol=0.05)  # the random field moved the depth


def test_depth_proxy_tilt_turns_the_ramp(clean: np.ndarray) -> None:
    flat = np.full_like(clean, 0.5)  # no dark-channel structure: the ramp alone decides
    left = deg.depth_proxy(flat, {"tilt": -90.0, "field": 0.0, "seed": 0})  # far side turned to the left
    up = deg.depth_proxy(flat, {"tilt": 0.0, "field": 0.0, "seed": 0})
    assert left[:, :8].mean() > left[:, -8:].mean() + 0.5
    assert np.allclose(up, deg.depth_proxy(flat), atol=1e-6)
