"""The embedded default: offline paired data for the three tasks, made from photos installed packages ship.

Photos come from scikit-image (colour: astronaut, chelsea, coffee, rocket, the stereo motorcycle with its
disparity map, i.e. real depth; grayscale photos and textures used as RGB: camera, brick, grass, gravel,
coins, moon, immunohistochemistry) and, optionally, scikit-learn (china, flower) and matplotlib
(grace_hopper); both of those arrive with mlflow. ``params.yaml`` (``prepare.embedded.photos``) picks them.
Every pair is one random crop of one photo, resized so its short side is ``short_side``, degraded by the
task's model. Splits are by photo: no photo is in two splits, so a test score never measures memorised
scenery.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.transform import resize

from ast_model.config import ConfigError
from ast_model.data import degradations as deg
from ast_model.data.config import EmbeddedConfig
from ast_model.data.files import to_uint8


@dataclass(frozen=True)
class Photo:
    """A clean photo and, where the package ships one, its depth.

    Attributes:
        image: float32 (H, W, 3) in [0, 1].
        depth: float32 (H, W) in [0, 1] (1 = far), or None.
    """

    image: np.ndarray
    depth: np.ndarray | None


@dataclass(frozen=True)
class EmbeddedPair:
    """One generated pair.

    Attributes:
        key: ``<photo>_<variant>``, unique within a dataset.
        input: uint8 (H, W, 3), degraded.
        target: uint8 (H, W, 3), clean.
        meta: photo, variant, crop box and the degradation parameters.
    """

    key: str
    input: np.ndarray
    target: np.ndarray
    meta: dict[str, Any]


def _skimage(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
    def load() -> tuple[np.ndarray, np.ndarray | None]:
        import skimage.data

        image = getattr(skimage.data, name)()
        if image.ndim == 2:  # grayscale photos and textures: the same content in the three channels
            image = np.repeat(image[..., None], 3, axis=2)
        return image, None

    return load


def _motorcycle() -> tuple[np.ndarray, np.ndarray | None]:
    import skimage.data

    left, _right, disparity = skimage.data.stereo_motorcycle()  # disparity is aligned with the left view
    return left, deg.depth_from_disparity(disparity)


def _sklearn(name: str) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
    def load() -> tuple[np.ndarray, np.ndarray | None]:
        try:
            from sklearn.datasets import load_sample_image
        except ImportError as exc:
            raise ConfigError(f"embedded photo {name!r} needs scikit-learn; install it or drop the photo") from exc
        return load_sample_image(f"{name}.jpg"), None

    return load


def _grace_hopper() -> tuple[np.ndarray, np.ndarray | None]:
    try:
        from matplotlib import cbook
    except ImportError as exc:
        raise ConfigError("embedded photo 'grace_hopper' needs matplotlib; install it or drop the photo") from exc
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return np.asarray(img.convert("RGB")), None


_PHOTOS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]] = {
    "astronaut": _skimage("astronaut"),
    # Grayscale photos and textures (used as RGB): more distinct content for the degradation to sit on.
    "camera": _skimage("camera"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "coins": _skimage("coins"),
    "moon": _skimage("moon"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _motorcycle,
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
    "grace_hopper": _grace_hopper,
}


def list_photos() -> list[str]:
    """Names accepted by :func:`load_photo` (and by ``prepare.embedded.photos``)."""
    return list(_PHOTOS)


def load_photo(name: str) -> Photo:
    """Load a shipped photo.

    Args:
        name: one of :func:`list_photos`.

    Returns:
        The photo as float32 in [0, 1], with its depth when the package ships one.

    Raises:
        ConfigError: unknown name, or the package that ships it is not installed.
    """
    if name not in _PHOTOS:
        raise ConfigError(f"unknown embedded photo {name!r} (known: {', '.join(_PHOTOS)})")
    rgb, depth = _PHOTOS[name]()
    return Photo(image=np.asarray(rgb, dtype=np.float32)[..., :3] / 255.0, depth=depth)


def embedded_problems(cfg: EmbeddedConfig, section: str = "prepare.embedded") -> list[str]:
    """Photo names, split disjointness and variant counts of the embedded default (empty: fine).

    Args:
        cfg: the ``prepare.embedded`` section.
        section: its dotted name, for the messages.

    Returns:
        One line per problem, each naming its key.
    """
    problems = []
    seen: dict[str, str] = {}
    for split, photos in cfg.photos.items():
        for photo in photos:
            if photo not in _PHOTOS:
                problems.append(f"{section}.photos.{split}: unknown photo {photo!r}")
            if photo in seen and seen[photo] != split:
                problems.append(f"{section}.photos: {photo!r} is in both {seen[photo]} and {split}")
            seen.setdefault(photo, split)
        if cfg.variants.get(split, 0) < 1:
            problems.append(f"{section}.variants.{split}: need >= 1 pair per photo")
    extra = sorted(set(cfg.variants) - set(cfg.photos))
    if extra:
        problems.append(f"{section}.variants: splits without photos: {', '.join(extra)}")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        problems.append(f"{section}.crop_scale: need 0 < lo <= hi <= 1, got {list(cfg.crop_scale)}")
    if cfg.short_side < 16 or cfg.max_aspect < 1:
        problems.append(f"{section}: short_side must be >= 16 and max_aspect >= 1")
    return problems


def pair_seed(seed: int, task: str, photo: str, variant: int) -> np.random.Generator:
    """The generator of one pair: independent of which other photos or splits exist.

    Args:
        seed: master seed.
        task: rain | raindrop | haze.
        photo: photo name.
        variant: pair index for this photo.

    Returns:
        A fresh numpy Generator.
    """
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(photo.encode()), variant])


def _crop_resize(photo: Photo, rng: np.random.Generator, cfg: EmbeddedConfig) -> tuple[Photo, list[int]]:
    h, w = photo.image.shape[:2]
    scale = rng.uniform(*cfg.crop_scale)
    ch, cw = int(round(scale * h)), int(round(scale * w))
    # Cap the aspect ratio so every pair has a similar pixel count (a steady cost per evaluated image).
    cw = min(cw, int(round(ch * cfg.max_aspect)))
    ch = min(ch, int(round(cw * cfg.max_aspect)))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    scale = cfg.short_side / min(ch, cw)
    size = (max(cfg.short_side, round(ch * scale)), max(cfg.short_side, round(cw * scale)))
    image = resize(photo.image[y0 : y0 + ch, x0 : x0 + cw], (*size, 3), anti_aliasing=True)
    depth = None
    if photo.depth is not None:
        depth = resize(photo.depth[y0 : y0 + ch, x0 : x0 + cw], size, anti_aliasing=True).astype(np.float32)
    return Photo(image=image.astype(np.float32), depth=depth), [y0, x0, ch, cw]


def degrade(
    task: str, clean: np.ndarray, depth: np.ndarray | None, rng: np.random.Generator, cfg: EmbeddedConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the degradation model of ``task`` with freshly sampled parameters.

    Args:
        task: rain | raindrop | haze.
        clean: float (H, W, 3) in [0, 1].
        depth: float (H, W) in [0, 1] or None (haze then uses :func:`degradations.depth_proxy`).
        rng: the pair's generator.
        cfg: supplies the parameter ranges.

    Returns:
        ``(degraded float32 (H, W, 3), params dict)``.
    """
    if task == "rain":
        params = deg.sample_rain_params(rng, cfg.rain)
        return deg.apply_rain(clean, params), params
    if task == "raindrop":
        params = deg.sample_drop_params(rng, clean.shape[:2], cfg.raindrop)
        return deg.apply_drops(clean, params), params
    if task == "haze":
        params = deg.sample_haze_params(rng, cfg.haze)
        params["depth"] = "disparity" if depth is not None else "proxy"
        d = depth if depth is not None else deg.depth_proxy(clean, params.get("proxy"))
        return deg.apply_haze(clean, d, params), params
    raise ConfigError(f"unknown task {task!r} (known: rain, raindrop, haze)")


def generate_split(task: str, split: str, cfg: EmbeddedConfig) -> Iterator[EmbeddedPair]:
    """Generate the pairs of one split of the embedded dataset of ``task``, photo by photo.

    Args:
        task: rain | raindrop | haze.
        split: a key of ``cfg.photos``.
        cfg: the ``prepare.embedded`` section (validated).

    Yields:
        :class:`EmbeddedPair` in a fixed order (photos as listed, then variants).
    """
    for name in cfg.photos[split]:
        photo = load_photo(name)
        for variant in range(cfg.variants[split]):
            rng = pair_seed(cfg.seed, task, name, variant)
            view, crop = _crop_resize(photo, rng, cfg)
            degraded, params = degrade(task, view.image, view.depth, rng, cfg)
            yield EmbeddedPair(
                key=f"{name}_{variant:03d}",
                input=to_uint8(degraded),
                target=to_uint8(view.image),
                meta={"photo": name, "variant": variant, "crop_yxhw": crop, "degradation": params},
            )
