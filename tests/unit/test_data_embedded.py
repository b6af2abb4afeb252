"""The embedded default: deterministic, split by photo, every pair carries its degradation parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ast_model.data.config import EmbeddedConfig
from ast_model.data.embedded import embedded_problems, generate_split, list_photos, load_photo

TINY = EmbeddedConfig(
    short_side=24,
    photos={"train": ["astronaut", "chelsea"], "test": ["motorcycle"]},
    variants={"train": 2, "test": 1},
)


@pytest.mark.parametrize("task", ["rain", "raindrop", "haze"])
def test_generation_is_deterministic_and_records_params(task: str) -> None:
    a = list(generate_split(task, "train", TINY))
    b = list(generate_split(task, "train", TINY))
    assert [p.key for p in a] == ["astronaut_000", "astronaut_001", "chelsea_000", "chelsea_001"]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.input, y.input) and np.array_equal(x.target, y.target) and x.meta == y.meta
    for pair in a:
        assert pair.input.dtype == np.uint8 and pair.input.shape == pair.target.shape
        assert min(pair.input.shape[:2]) == 24 and max(pair.input.shape[:2]) <= 36  # max_aspect 1.5
        assert not np.array_equal(pair.input, pair.target)
        assert pair.meta["photo"] in ("astronaut", "chelsea") and pair.meta["degradation"]["model"]


def test_other_seed_gives_other_pairs() -> None:
    a = next(generate_split("rain", "train", TINY))
    b = next(generate_split("rain", "train", dataclasses.replace(TINY, seed=1)))
    assert not np.array_equal(a.input, b.input)


def test_adding_a_photo_leaves_the_other_pairs_unchanged() -> None:
    more = dataclasses.replace(TINY, photos={"train": ["coffee", "astronaut", "chelsea"], "test": ["motorcycle"]})
    base = {p.key: p for p in generate_split("haze", "train", TINY)}
    grown = {p.key: p for p in generate_split("haze", "train", more)}
    for key, pair in base.items():
        assert np.array_equal(grown[key].input, pair.input)


def test_haze_uses_the_shipped_depth_where_there_is_one() -> None:
    test = next(generate_split("haze", "test", TINY))
    train = next(generate_split("haze", "train", TINY))
    assert test.meta["degradation"]["depth"] == "disparity" and train.meta["degradation"]["depth"] == "proxy"


def test_a_photo_in_two_splits_and_unknown_photos_are_rejected_together() -> None:
    bad = dataclasses.replace(TINY, photos={"train": ["astronaut", "nope"], "test": ["astronaut"]})
    problems = "\n".join(embedded_problems(bad))
    assert "unknown photo 'nope'" in problems and "'astronaut' is in both train and test" in problems


def test_every_listed_photo_loads_offline() -> None:
    for name in list_photos():
        photo = load_photo(name)
        assert photo.image.ndim == 3 and photo.image.shape[2] == 3 and 0 <= photo.image.min() <= photo.image.max() <= 1
        if photo.depth is not None:
            assert photo.depth.shape == photo.image.shape[:2]
    assert load_photo("motorcycle").depth is not None
