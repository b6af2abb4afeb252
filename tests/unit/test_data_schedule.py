"""Progressive patch schedule: stage lookup at boundaries, past the end, and validation."""

from __future__ import annotations

import pytest

from ast_model.config import load_section
from ast_model.data.schedule import PatchStage, stage_at, total_steps, validate_stages

STAGES = [PatchStage(64, 8, 10), PatchStage(96, 4, 5), PatchStage(128, 2, 3)]


@pytest.mark.parametrize(
    ("step", "index", "within"),
    [(0, 0, 0), (9, 0, 9), (10, 1, 0), (14, 1, 4), (15, 2, 0), (17, 2, 2), (18, 2, 3), (100, 2, 85)],
)
def test_stage_at_boundaries_and_past_the_end(step: int, index: int, within: int) -> None:
    i, stage, k = stage_at(STAGES, step)
    assert (i, k) == (index, within)
    assert stage is STAGES[index]


def test_total_steps() -> None:
    assert total_steps(STAGES) == 18


@pytest.mark.parametrize(
    "stages", [[], [PatchStage(0, 1, 1)], [PatchStage(64, -1, 1)], [PatchStage(64, 1, 1), PatchStage(64, 1, 0)]]
)
def test_invalid_schedules_are_rejected(stages: list[PatchStage]) -> None:
    with pytest.raises(ValueError, match="patch schedule"):
        validate_stages(stages)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="step"):
        stage_at(STAGES, -1)


def test_stages_load_from_params_with_the_project_loader() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Section:
        stages: list[PatchStage] = field(default_factory=list)

    params = {"train": {"stages": [{"patch_size": 64, "batch_size": 4, "steps": 3}]}}
    assert load_section(Section, params, "train").stages == [PatchStage(64, 4, 3)]
