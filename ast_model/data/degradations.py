"""Synthetic degradations: rain streaks, raindrops and haze (the models of docs/data.md#degradation-models).

Each model is a pair of functions:

* ``sample_*_params(rng, ranges, ...)`` draws every random choice for one image, including the seed of
  any noise field, into a plain JSON-able dict;
* ``apply_*(clean, params, ...)`` is a pure function of the clean image and that dict.

So a degraded image can be regenerated from the parameters recorded in its sample's json alone.
Images are float32 ``(H, W, 3)`` arrays in [0, 1]; outputs are clipped to [0, 1].

Angles follow the usual image convention: degrees counter-clockwise from the horizontal with the y axis
pointing *up* (90 = vertical streaks, 60 = leaning right at the top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# SciPy and scikit-image are imported inside the functions that use them: this module's parameter classes
# are read by every stage's config (ast_model.data.config), and those imports cost ~1 s per process.

Params = dict[str, Any]

_STREAK_PEAK_QUANTILE = 0.999


# --------------------------------------------------------------------------------------------------
# Parameter ranges (the `prepare.embedded.*` sections of params.yaml build these)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RainRanges:
    """Ranges of the rain-streak model (Yang et al. 2017; Fu et al. 2017; Li et al. 2019).

    Attributes:
        density: fraction of pixels carrying a noise grain before the motion blur.
        length: streak (motion blur) length in pixels, light rain.
        heavy_length: streak length for heavy rain.
        heavy_prob: probability that an image gets heavy rain (longer streaks plus a veil).
        angle: streak angle in degrees from the horizontal (90 = vertical).
        width: Gaussian sigma of a noise grain, i.e. the streak thickness, in pixels.
        keep: fraction of the blurred layer kept as bright streaks ("levels" threshold).
        opacity: blend opacity of the streak layer.
        transmission: veil transmission T of heavy rain, ``O = T*(B+S) + (1-T)*A``.
        airlight: veil brightness A of heavy rain.
    """

    density: tuple[float, float] = (0.2, 0.4)
    length: tuple[int, int] = (5, 21)
    heavy_length: tuple[int, int] = (21, 41)
    heavy_prob: float = 0.25
    angle: tuple[float, float] = (60.0, 120.0)
    width: tuple[float, float] = (0.4, 0.9)
    keep: tuple[float, float] = (0.06, 0.2)
    opacity: tuple[float, float] = (0.7, 0.8)
    transmission: tuple[float, float] = (0.75, 0.9)
    airlight: tuple[float, float] = (0.8, 1.0)


@dataclass(frozen=True)
class DropRanges:
    """Ranges of the raindrop model ``I = (1 - M)*B + R`` (Qian et al. 2018).

    Attributes:
        count: number of drops per image.
        radius: drop radius in pixels (at the image size the drops are drawn on).
        aspect: ratio of the ellipse axes.
        magnification: how much a drop magnifies the background it refracts.
        blur: Gaussian sigma (pixels) of the refracted, out-of-focus background.
        feather: width of the soft edge as a fraction of the radius.
    """

    count: tuple[int, int] = (5, 50)
    radius: tuple[float, float] = (4.0, 16.0)
    aspect: tuple[float, float] = (0.7, 1.3)
    magnification: tuple[float, float] = (1.5, 3.0)
    blur: tuple[float, float] = (1.0, 3.0)
    feather: tuple[float, float] = (0.2, 0.5)


@dataclass(frozen=True)
class HazeRanges:
    """Ranges of the atmospheric scattering model ``I = J*t + A*(1 - t)``, ``t = exp(-beta*d)``.

    With depth ``d`` normalised to [0, 1], beta 0.6-1.8 is RESIDE's indoor range; the default reaches
    denser haze, closer to Dense-Haze.

    Attributes:
        airlight: global atmospheric light A.
        beta: scattering coefficient.
        tint: per-channel jitter of A (slightly coloured haze).
        proxy_tilt: photos without a depth map: the far side of the proxy's ramp is tilted by up to this
            many degrees from the top (0 = always the top, as :func:`depth_proxy`).
        proxy_field: photos without a depth map: weight of a smooth random field mixed into the proxy, drawn
            in [0, proxy_field]. 0 with no tilt = the fixed :func:`depth_proxy`, a function of the clean photo
            alone, which a model can learn to read off the scene instead of off the haze; a real depth map
            (the stereo test photo) follows neither.
    """

    airlight: tuple[float, float] = (0.8, 1.0)
    beta: tuple[float, float] = (1.0, 2.5)
    tint: float = 0.03
    proxy_tilt: float = 0.0
    proxy_field: float = 0.0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# --------------------------------------------------------------------------------------------------
# Rain streaks
# --------------------------------------------------------------------------------------------------
def sample_rain_params(rng: np.random.Generator, ranges: RainRanges = RainRanges()) -> Params:
    """Draw the rain-streak parameters of one image.

    Args:
        rng: the random generator (its state advances).
        ranges: parameter ranges.

    Returns:
        A dict accepted by :func:`apply_rain`.
    """
    heavy = bool(rng.random() < ranges.heavy_prob)
    lo, hi = ranges.heavy_length if heavy else ranges.length
    params: Params = {
        "model": "rain_streaks",
        "heavy": heavy,
        "density": _uniform(rng, ranges.density),
        "length": int(rng.integers(lo, hi + 1)),
        "angle": _uniform(rng, ranges.angle),
        "width": _uniform(rng, ranges.width),
        "keep": _uniform(rng, ranges.keep),
        "opacity": _uniform(rng, ranges.opacity),
        "blend": "screen" if rng.random() < 0.5 else "additive",
        "noise_seed": _seed(rng),
    }
    if heavy:
        params["transmission"] = _uniform(rng, ranges.transmission)
        params["airlight"] = _uniform(rng, ranges.airlight)
    return params


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised, anti-aliased line kernel for motion blur.

    Args:
        length: line length in pixels (>= 1).
        angle: degrees counter-clockwise from the horizontal, y up.

    Returns:
        float64 kernel (K, K), K odd, summing to 1.
    """
    size = length if length % 2 == 1 else length + 1
    kernel = np.zeros((size + 1, size + 1))  # one spare row/column for the bilinear splat
    c = size // 2
    theta = math.radians(angle)
    # Sample the segment densely and splat each point bilinearly: the line keeps its exact angle instead
    # of snapping its end points to the pixel grid (a 2-5 degree error for short kernels).
    t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 8 * length)
    rows = c - t * math.sin(theta)  # y points up in the angle convention, rows point down
    cols = c + t * math.cos(theta)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(kernel, (r0 + dr, c0 + dc), weight)
    kernel = kernel[:size, :size]
    return kernel / kernel.sum()


def rain_layer(shape: tuple[int, int], params: Params) -> np.ndarray:
    """The streak layer S of :func:`apply_rain`, in [0, 1].

    Dense noise, motion-blurred along the streak direction, then thresholded so that only the brightest
    ``keep`` fraction survives (Photoshop's noise -> motion blur -> levels recipe): the survivors are
    elongated along the blur direction.

    Args:
        shape: ``(H, W)``.
        params: from :func:`sample_rain_params`.

    Returns:
        float32 (H, W).
    """
    from scipy import ndimage, signal

    noise_rng = np.random.default_rng(params["noise_seed"])
    h, w = shape
    grains = (noise_rng.random((h, w)) < params["density"]) * noise_rng.random((h, w))
    grains = ndimage.gaussian_filter(grains, params["width"])
    blurred = signal.fftconvolve(grains, motion_kernel(params["length"], params["angle"]), mode="same")
    threshold, peak = np.quantile(blurred, [1.0 - params["keep"], _STREAK_PEAK_QUANTILE])
    # Normalising by a high quantile rather than the maximum keeps one freak pixel from dimming all streaks.
    return np.clip((blurred - threshold) / max(peak - threshold, 1e-8), 0.0, 1.0).astype(np.float32)


def apply_rain(clean: np.ndarray, params: Params) -> np.ndarray:
    """Add rain streaks to a clean image.

    Args:
        clean: float (H, W, 3) in [0, 1].
        params: from :func:`sample_rain_params`.

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    streaks = params["opacity"] * rain_layer(clean.shape[:2], params)[..., None]  # (H, W, 1)
    if params["blend"] == "screen":
        out = clean + streaks - clean * streaks
    else:
        out = clean + streaks
    if params.get("heavy"):
        t = params["transmission"]
        out = t * out + (1.0 - t) * params["airlight"]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Raindrops
# --------------------------------------------------------------------------------------------------
def sample_drop_params(rng: np.random.Generator, shape: tuple[int, int], ranges: DropRanges = DropRanges()) -> Params:
    """Draw the raindrops of one image.

    Args:
        rng: the random generator.
        shape: image ``(H, W)``: drop centres fall inside it.
        ranges: parameter ranges.

    Returns:
        A dict accepted by :func:`apply_drops` (``drops`` is a list of per-drop dicts).
    """
    h, w = shape
    count = int(rng.integers(ranges.count[0], ranges.count[1] + 1))
    drops = []
    for _ in range(count):
        drops.append(
            {
                "cy": float(rng.uniform(0, h)),
                "cx": float(rng.uniform(0, w)),
                "radius": _uniform(rng, ranges.radius),
                "aspect": _uniform(rng, ranges.aspect),
                "angle": float(rng.uniform(0.0, 180.0)),
                "magnification": _uniform(rng, ranges.magnification),
                "blur": _uniform(rng, ranges.blur),
                "feather": _uniform(rng, ranges.feather),
            }
        )
    return {"model": "raindrops", "count": count, "drops": drops}


def _drop_alpha(ys: np.ndarray, xs: np.ndarray, drop: Params) -> np.ndarray:
    """Soft elliptic mask of one drop on the pixel grid ``ys, xs`` (1 inside, feathered edge)."""
    theta = math.radians(drop["angle"])
    dy, dx = ys - drop["cy"], xs - drop["cx"]
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    rx, ry = drop["radius"] * drop["aspect"], drop["radius"]
    rho = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)  # 1 on the ellipse
    alpha = np.clip((1.0 - rho) / drop["feather"], 0.0, 1.0)
    return alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: no visible ring at the edge


def apply_drops(clean: np.ndarray, params: Params) -> np.ndarray:
    """Put raindrops on the lens: each drop shows a flipped, magnified, blurred view of the background.

    Args:
        clean: float (H, W, 3) in [0, 1].
        params: from :func:`sample_drop_params`.

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    from scipy import ndimage
    from skimage.transform import resize

    h, w = clean.shape[:2]
    out = clean.astype(np.float32).copy()
    for drop in params["drops"]:
        reach = drop["radius"] * max(1.0, drop["aspect"]) + 1.0
        y0, y1 = max(0, int(drop["cy"] - reach)), min(h, int(math.ceil(drop["cy"] + reach)) + 1)
        x0, x1 = max(0, int(drop["cx"] - reach)), min(w, int(math.ceil(drop["cx"] + reach)) + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        alpha = _drop_alpha(ys, xs, drop)[..., None]  # (h', w', 1)
        # A drop is a small lens: it shows a smaller, upside-down patch of the scene around it.
        half = max(reach / drop["magnification"], 1.0)
        sy0, sy1 = max(0, int(drop["cy"] - half)), min(h, int(math.ceil(drop["cy"] + half)) + 1)
        sx0, sx1 = max(0, int(drop["cx"] - half)), min(w, int(math.ceil(drop["cx"] + half)) + 1)
        source = clean[sy0:sy1, sx0:sx1][::-1]  # (h'', w'', 3), flipped vertically
        view = resize(source, (y1 - y0, x1 - x0, 3), order=1, mode="edge", anti_aliasing=False)
        view = ndimage.gaussian_filter(view, sigma=(drop["blur"], drop["blur"], 0))
        out[y0:y1, x0:x1] = (1.0 - alpha) * out[y0:y1, x0:x1] + alpha * view
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Haze
# --------------------------------------------------------------------------------------------------
def depth_from_disparity(disparity: np.ndarray) -> np.ndarray:
    """Normalised depth from a stereo disparity map (depth ~ 1 / disparity).

    Invalid disparities (0, inf, nan) take the value of the nearest valid pixel. The log compresses the
    large range of 1/disparity so the far half of the scene is not squeezed into one grey level.

    Args:
        disparity: float (H, W), pixels.

    Returns:
        float32 (H, W) in [0, 1], 1 = farthest.
    """
    from scipy import ndimage

    disparity = np.asarray(disparity, dtype=np.float64)
    valid = np.isfinite(disparity) & (disparity > 0)
    if not valid.any():
        raise ValueError("disparity map has no valid (finite, positive) value")
    _, (iy, ix) = ndimage.distance_transform_edt(~valid, return_indices=True)
    filled = disparity[iy, ix]
    return _normalise(np.log(1.0 / filled))


def depth_proxy(clean: np.ndarray, proxy: Params | None = None) -> np.ndarray:
    """A plausible depth map for a photo without one.

    Half a top-to-bottom ramp (the far scene and the sky are usually at the top) and half the smoothed
    dark channel (He et al.: bright, low-saturation regions such as sky tend to be far). With ``proxy``
    (drawn by :func:`sample_haze_params` when ``proxy_tilt`` or ``proxy_field`` is set), the ramp's far side
    is tilted by ``proxy["tilt"]`` degrees and a smooth random field (Gaussian-filtered noise, seeded by
    ``proxy["seed"]``) is mixed in with weight ``proxy["field"]``: scenes whose depth does not follow
    their brightness, as real depth maps often do not.

    Args:
        clean: float (H, W, 3) in [0, 1].
        proxy: optional ``{"tilt", "field", "seed"}``; None = the fixed proxy.

    Returns:
        float32 (H, W) in [0, 1], 1 = farthest.
    """
    from scipy import ndimage

    h, w = clean.shape[:2]
    tilt = math.radians(proxy["tilt"]) if proxy else 0.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    # Distance towards the far side: (0, -1) in (x, y) image coordinates is "up", rotated by the tilt.
    ramp = _normalise(-(ys - h / 2) * math.cos(tilt) + (xs - w / 2) * math.sin(tilt))
    size = max(3, min(h, w) // 20)
    dark = ndimage.minimum_filter(clean.min(axis=2), size=size)
    dark = ndimage.gaussian_filter(dark, sigma=min(h, w) / 16)
    depth = 0.5 * ramp + 0.5 * _normalise(dark)
    if proxy and proxy["field"] > 0:
        noise = np.random.default_rng(proxy["seed"]).standard_normal((h, w))
        field = _normalise(ndimage.gaussian_filter(noise, sigma=min(h, w) / 8))
        depth = (1.0 - proxy["field"]) * _normalise(depth) + proxy["field"] * field
    return _normalise(depth)


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)).astype(np.float32)


def sample_haze_params(rng: np.random.Generator, ranges: HazeRanges = HazeRanges()) -> Params:
    """Draw the haze parameters of one image.

    Args:
        rng: the random generator.
        ranges: parameter ranges.

    Returns:
        A dict accepted by :func:`apply_haze` (``airlight`` is per channel).
    """
    a = _uniform(rng, ranges.airlight)
    tint = rng.uniform(-ranges.tint, ranges.tint, size=3) if ranges.tint > 0 else np.zeros(3)
    params: Params = {
        "model": "haze",
        "beta": _uniform(rng, ranges.beta),
        "airlight": [float(min(1.0, max(0.0, a + t))) for t in tint],
    }
    if ranges.proxy_tilt > 0 or ranges.proxy_field > 0:  # drawn only then: the default keeps its pairs
        params["proxy"] = {
            "tilt": _uniform(rng, (-ranges.proxy_tilt, ranges.proxy_tilt)),
            "field": _uniform(rng, (0.0, ranges.proxy_field)),
            "seed": _seed(rng),
        }
    return params


def apply_haze(clean: np.ndarray, depth: np.ndarray, params: Params) -> np.ndarray:
    """Atmospheric scattering: ``I = J*t + A*(1 - t)`` with ``t = exp(-beta*d)``.

    Args:
        clean: float (H, W, 3) in [0, 1] (J).
        depth: float (H, W) in [0, 1] (d), same size.
        params: from :func:`sample_haze_params`.

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    if depth.shape != clean.shape[:2]:
        raise ValueError(f"depth {depth.shape} does not match image {clean.shape[:2]}")
    t = np.exp(-params["beta"] * depth)[..., None]  # (H, W, 1)
    airlight = np.asarray(params["airlight"], dtype=np.float32)  # (3,)
    return np.clip(clean * t + airlight * (1.0 - t), 0.0, 1.0).astype(np.float32)
