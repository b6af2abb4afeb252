"""The progressive patch schedule: training runs through stages of (patch size, micro batch, steps).

Restoration transformers are commonly trained on small patches first (cheap, many steps) and on larger
ones later (long-range context). A schedule is a sequence of :class:`PatchStage`; :func:`stage_at` maps a
global optimizer step to the stage it belongs to, so a resumed run picks up in the right stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PatchStage:
    """One stage of the progressive schedule.

    Attributes:
        patch_size: square training crop side, in pixels.
        batch_size: micro batch per rank (before gradient accumulation).
        steps: optimizer steps spent in this stage.
    """

    patch_size: int
    batch_size: int
    steps: int


def validate_stages(stages: Sequence[PatchStage]) -> None:
    """Check a schedule: non-empty, positive sizes and step counts.

    Args:
        stages: the schedule.

    Raises:
        ValueError: naming the first offending stage (by index) and field.
    """
    if not stages:
        raise ValueError("patch schedule is empty: give at least one stage")
    for i, stage in enumerate(stages):
        for name in ("patch_size", "batch_size", "steps"):
            value = getattr(stage, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"patch schedule stage {i}: {name} must be a positive integer, got {value!r}")


def total_steps(stages: Sequence[PatchStage]) -> int:
    """Optimizer steps of the whole schedule.

    Args:
        stages: the schedule.

    Returns:
        The sum of the stages' steps.
    """
    return sum(stage.steps for stage in stages)


def stage_at(stages: Sequence[PatchStage], step: int) -> tuple[int, PatchStage, int]:
    """The stage that global optimizer step ``step`` (0-based) falls in.

    Args:
        stages: the schedule (validated with :func:`validate_stages`).
        step: global optimizer step, >= 0.

    Returns:
        ``(index, stage, step_in_stage)``. Past the end of the schedule the last stage is returned and
        ``step_in_stage`` keeps counting (``step - start of the last stage``), so training that runs
        longer than the schedule simply stays in the final stage.

    Raises:
        ValueError: the schedule is invalid or ``step`` is negative.
    """
    validate_stages(stages)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    start = 0
    for index, stage in enumerate(stages):
        if step < start + stage.steps:
            return index, stage, step - start
        start += stage.steps
    last = len(stages) - 1
    return last, stages[last], step - (start - stages[last].steps)
