"""Learning-rate schedule: warm-up then cosine to a floor, per step, restarted per stage."""

from __future__ import annotations

import itertools
import math

import pytest

from ast_model.train.config import ResolvedPhase
from ast_model.train.lr_schedule import lr_at, warmup_cosine


def test_one_step_per_epoch_reproduces_the_official_per_epoch_schedule() -> None:
    # docs/recipes.md#learning-rate-schedule: epochs 1-3 give lr/3, 2lr/3, lr; epoch e >= 4 gives
    # 1e-6 + (lr - 1e-6) * (1 + cos(pi * (e - 4) / (nepoch - 3))) / 2.
    lr, floor, nepoch = 2e-4, 1e-6, 20
    got = [warmup_cosine(e - 1, steps=nepoch, warmup=3, peak=lr, floor=floor) for e in range(1, nepoch + 1)]
    want = [lr / 3, 2 * lr / 3, lr] + [
        floor + (lr - floor) * (1 + math.cos(math.pi * (e - 4) / (nepoch - 3))) / 2 for e in range(4, nepoch + 1)
    ]
    assert got == pytest.approx(want, rel=1e-12)


def test_warmup_rises_then_cosine_falls_towards_the_floor() -> None:
    lrs = [warmup_cosine(t, steps=100, warmup=10, peak=1e-3, floor=1e-6) for t in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert 1e-6 < lrs[-1] < 1e-6 + 1e-3 * 1e-3  # one step short of the floor, as the official schedule
    assert warmup_cosine(500, steps=100, warmup=10, peak=1e-3, floor=1e-6) == lrs[-1]  # past the end: flat


def test_no_warmup_starts_at_peak() -> None:
    assert warmup_cosine(0, steps=10, warmup=0, peak=3e-4, floor=0.0) == pytest.approx(3e-4)


@pytest.mark.parametrize(("steps", "warmup"), [(0, 0), (5, 5), (5, -1)])
def test_bad_lengths_raise(steps: int, warmup: int) -> None:
    with pytest.raises(ValueError):
        warmup_cosine(0, steps=steps, warmup=warmup, peak=1.0, floor=0.0)


def test_each_stage_restarts_with_its_own_peak() -> None:
    stages = [ResolvedPhase(0, 64, 4, 4, 10, 2e-4, 2), ResolvedPhase(1, 128, 2, 2, 6, 1e-4, 3)]
    lrs = [lr_at(stages, t, floor=1e-6) for t in range(16)]
    assert lrs[1] == pytest.approx(2e-4) and lrs[9] < 2e-5  # stage 0 warmed up, then decayed
    assert lrs[10] == pytest.approx(1e-4 / 3) and lrs[12] == pytest.approx(1e-4)  # stage 1 warms up anew
    assert lrs[15] < lrs[13]
