"""The progressive patch schedule: training runs through phases of (patch size, micro batch, steps).

Restoration transformers are commonly trained on small patches first (cheap, many steps) and on larger
ones later (long-range context). A schedule is a sequence of :class:`PatchPhase`; :func:`phase_at` maps a
global optimizer step to the phase it belongs to, so a resumed run picks up in the right phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PatchPhase:
    """One phase of the progressive schedule.

    Attributes:
        patch_size: square training crop side, in pixels.
        micro_batch: micro batch per rank (before gradient accumulation).
        steps: optimizer steps spent in this phase.
    """

    patch_size: int
    micro_batch: int
    steps: int


def validate_phases(phases: Sequence[PatchPhase]) -> None:
    """Check a schedule: non-empty, positive sizes and step counts.

    Args:
        phases: the schedule.

    Raises:
        ValueError: naming the first offending phase (by index) and field.
    """
    if not phases:
        raise ValueError("patch schedule is empty: give at least one phase")
    for i, phase in enumerate(phases):
        for name in ("patch_size", "micro_batch", "steps"):
            value = getattr(phase, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"patch schedule phase {i}: {name} must be a positive integer, got {value!r}")


def total_steps(phases: Sequence[PatchPhase]) -> int:
    """Optimizer steps of the whole schedule.

    Args:
        phases: the schedule.

    Returns:
        The sum of the phases' steps.
    """
    return sum(phase.steps for phase in phases)


def phase_at(phases: Sequence[PatchPhase], step: int) -> tuple[int, PatchPhase, int]:
    """The phase that global optimizer step ``step`` (0-based) falls in.

    Args:
        phases: the schedule (validated with :func:`validate_phases`).
        step: global optimizer step, >= 0.

    Returns:
        ``(index, phase, step_in_stage)``. Past the end of the schedule the last phase is returned and
        ``step_in_stage`` keeps counting (``step - start of the last phase``), so training that runs
        longer than the schedule simply stays in the final phase.

    Raises:
        ValueError: the schedule is invalid or ``step`` is negative.
    """
    validate_phases(phases)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    start = 0
    for index, phase in enumerate(phases):
        if step < start + phase.steps:
            return index, phase, step - start
        start += phase.steps
    last = len(phases) - 1
    return last, phases[last], step - (start - phases[last].steps)
