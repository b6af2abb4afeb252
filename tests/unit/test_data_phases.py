"""Progressive patch schedule: phase lookup at boundaries, past the end, and validation."""

from __future__ import annotations

import pytest

from ast_model.config import load_section
from ast_model.data.phases import PatchPhase, phase_at, total_steps, validate_phases

PHASES = [PatchPhase(64, 8, 10), PatchPhase(96, 4, 5), PatchPhase(128, 2, 3)]


@pytest.mark.parametrize(
    ("step", "index", "within"),
    [(0, 0, 0), (9, 0, 9), (10, 1, 0), (14, 1, 4), (15, 2, 0), (17, 2, 2), (18, 2, 3), (100, 2, 85)],
)
def test_phase_at_boundaries_and_past_the_end(step: int, index: int, within: int) -> None:
    i, phase, k = phase_at(PHASES, step)
    assert (i, k) == (index, within)
    assert phase is PHASES[index]


def test_total_steps() -> None:
    assert total_steps(PHASES) == 18


@pytest.mark.parametrize(
    "phases", [[], [PatchPhase(0, 1, 1)], [PatchPhase(64, -1, 1)], [PatchPhase(64, 1, 1), PatchPhase(64, 1, 0)]]
)
def test_invalid_schedules_are_rejected(phases: list[PatchPhase]) -> None:
    with pytest.raises(ValueError, match="patch schedule"):
        validate_phases(phases)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="step"):
        phase_at(PHASES, -1)


def test_phases_load_from_params_with_the_project_loader() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Section:
        phases: list[PatchPhase] = field(default_factory=list)

    params = {"train": {"phases": [{"patch_size": 64, "micro_batch": 4, "steps": 3}]}}
    assert load_section(Section, params, "train").phases == [PatchPhase(64, 4, 3)]
