"""The flow's checks before any work, and its reading of stage failures, on the project's own params.yaml (seconds)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from pipelines.errors import PreflightError
from pipelines.flows import StageFailed, _dvc_stage_status, plan_run, retry_unless_user_error
from tests.tiny_pipeline import ROOT, TINY_OVERRIDES

pytestmark = pytest.mark.integration


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_every_problem_is_named_before_anything_is_written(repo: Path) -> None:
    before = (repo / "params.yaml").read_bytes()
    with pytest.raises(PreflightError) as caught:
        plan_run(repo, ["rain", "snow"], {"tasks.rain.train.lrr": 1e-4, "shard.samples_per_shard": 0}, nodes=3)
    text = "\n".join(caught.value.problems)
    assert "tasks.rain.train.lrr" in text  # the mistyped key, under the task that has it
    assert "shard.samples_per_shard" in text
    assert "tasks='snow': no such task" in text
    assert "nodes=3 exceeds data.max_nodes=2" in text
    assert (repo / "params.yaml").read_bytes() == before


def test_valid_overrides_plan_all_tasks_and_change_the_params(repo: Path) -> None:
    plan = plan_run(repo, None, TINY_OVERRIDES, nodes=2)
    assert plan.tasks == ["rain"] and plan.changed and plan.nodes == 2
    assert plan.params["train"]["phases"][0]["steps"] == 8
    default = plan_run(repo, None, {}, nodes=1)
    assert default.tasks == ["rain", "raindrop", "haze"] and not default.changed


def test_tables_run_every_ablation_variant_then_every_table_and_need_all_three_tasks(repo: Path) -> None:
    from pipelines.tables import TABLES

    plan = plan_run(repo, None, {}, nodes=1, tables=True)
    variants = list(plan.params["tables"]["variants"])
    assert len(variants) == 17
    assert plan.table_stages == [f"ablation@{v}" for v in variants] + list(TABLES)
    assert plan_run(repo, None, {}, nodes=1, tables=False).table_stages == []
    with pytest.raises(PreflightError) as caught:
        plan_run(repo, ["rain"], {}, nodes=1, tables=True)  # table2/table3 score raindrop and haze
    assert "tables=true" in caught.value.problems[0] and "raindrop, haze" in caught.value.problems[0]
    with pytest.raises(PreflightError):
        plan_run(repo, None, TINY_OVERRIDES, nodes=1, tables=True)  # the tiny profile has the rain task only


def test_the_stage_status_comes_from_dvc_s_message_and_decides_the_retry() -> None:
    tail = [
        "train: params.yaml: tasks.rain.train.lrr: unknown key",
        "ERROR: failed to reproduce 'train@rain': failed to run: python -m pipelines.stages.train --task rain, "
        "exited with 2",
    ]
    assert _dvc_stage_status(tail, 255) == 2
    assert _dvc_stage_status(["ERROR: unexpected error"], 255) == 255
    user, crash = StageFailed("train@rain", 2, tail), StageFailed("train@rain node 1", 247)
    assert retry_unless_user_error(None, None, Failed(data=user)) is False
    assert retry_unless_user_error(None, None, Failed(data=crash)) is True
    assert retry_unless_user_error(None, None, Failed(data=PreflightError("x"))) is False
    assert retry_unless_user_error(None, None, Completed()) is True
    copy = pickle.loads(pickle.dumps(user))  # a task's exception may be serialised by Prefect
    assert (copy.what, copy.status, copy.user_fixable) == ("train@rain", 2, True)
    problem = pickle.loads(pickle.dumps(PreflightError(["a", "b"], source="params.yaml", section="train")))
    assert (problem.problems, problem.source, problem.section) == (["a", "b"], "params.yaml", "train")
