"""Learning rate per optimizer step: linear warm-up, then cosine down to a floor, restarted per phase.

The official recipe steps a warm-up + cosine scheduler once per *epoch* and restarts it (with a fresh
optimizer) in every progressive phase, because each phase was a separate run. We keep the per-phase
restart (each phase has its own peak LR in the recipe) but evaluate the curve every *step*, so short and
long epochs behave alike and a resumed run lands on exactly the same LR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ast_model.data.phases import phase_at
from ast_model.train.config import ResolvedPhase


def warmup_cosine(step: int, *, steps: int, warmup: int, peak: float, floor: float) -> float:
    """LR at ``step`` (0-based) of a phase of ``steps`` steps.

    Warm-up: ``peak * (step + 1) / warmup`` for the first ``warmup`` steps, so the last warm-up step
    reaches ``peak`` (the official per-epoch warm-up gives lr/3, 2lr/3, lr). Then cosine from ``peak``
    to ``floor``: ``floor + (peak - floor) * (1 + cos(pi * k / (steps - warmup))) / 2`` with ``k`` the
    steps since warm-up, which starts at ``peak`` and ends one step short of ``floor`` (as the official
    schedule ends one epoch short).

    Args:
        step: step within the phase; values past the end keep the last LR.
        steps: phase length (>= 1).
        warmup: warm-up length (0 <= warmup < steps).
        peak: peak LR.
        floor: final LR (official eta_min 1e-6).

    Returns:
        The learning rate.
    """
    if steps < 1 or not 0 <= warmup < steps:
        raise ValueError(f"warmup_cosine: need steps >= 1 and 0 <= warmup < steps, got {steps=}, {warmup=}")
    step = min(max(step, 0), steps - 1)
    if step < warmup:
        return peak * (step + 1) / warmup
    k = step - warmup
    return floor + (peak - floor) * (1.0 + math.cos(math.pi * k / (steps - warmup))) / 2.0


def lr_at(phases: Sequence[ResolvedPhase], step: int, *, floor: float) -> float:
    """LR of global optimizer step ``step`` over all phases (each phase warms up and decays anew).

    Args:
        phases: the resolved phases.
        step: global optimizer step (0-based).
        floor: the cosine floor (``train.schedule.min_lr``).

    Returns:
        The learning rate.
    """
    index, _, in_phase = phase_at([s.patch_phase() for s in phases], step)
    st = phases[index]
    return warmup_cosine(in_phase, steps=st.steps, warmup=st.warmup_steps, peak=st.lr, floor=floor)
