"""pipelines.params: tasks resolve into ordinary profiles, overrides are dotted keys, and one check names
every problem of the whole params file with its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.errors import PreflightError
from pipelines.params import apply_overrides, check_params, read_params, task_params, write_overrides

REPO = Path(__file__).resolve().parents[2]


def test_the_repo_params_pass_the_whole_check() -> None:
    check_params(read_params(REPO / "params.yaml"), "params.yaml")


def test_a_task_is_the_shared_profile_with_its_keys_merged_in() -> None:
    params = {
        "train": {
            "loss": "mse",
            "phases": [{"patch_size": 64, "batch_size": 4, "lr": 1e-3, "steps": 3}],
            "schedule": {"warmup_steps": 2, "min_lr": 1e-6},
        },
        "evaluate": {"weights": "final"},
        "tasks": {
            "haze": {
                "dataset": "embedded_haze",
                "train": {"schedule": {"warmup_steps": 5}},
                "evaluate": {"weights": "best"},
            }
        },
    }
    out = task_params(params, "haze")
    assert out["train"]["experiment"] == "haze" and out["train"]["dataset"] == "embedded_haze"
    assert out["train"]["schedule"] == {"warmup_steps": 5, "min_lr": 1e-6}  # mappings merge key by key
    assert out["train"]["loss"] == "mse" and out["evaluate"] == {"weights": "best"}
    assert params["train"]["schedule"]["warmup_steps"] == 2  # the input is not modified
    with pytest.raises(PreflightError, match="no task 'snow'"):
        task_params(params, "snow")


def test_every_problem_is_named_by_its_key_at_once() -> None:
    params = read_params(REPO / "params.yaml")
    bad = apply_overrides(
        params,
        {"tasks.rain.train.lrr": 1.0, "train.log_every": 0, "evaluate.protocol": "psnr", "tasks.haze.dataset": "nope"},
    )
    bad["trian"] = {}
    with pytest.raises(PreflightError) as err:
        check_params(bad, "params.yaml")
    text = "\n".join(err.value.problems)
    assert "tasks.rain.train.lrr" in text and "train.log_every must be >= 1" in text
    assert "evaluate.protocol" in text and "tasks.haze.dataset='nope' is not in data.datasets" in text
    assert "unknown section 'trian'" in text


def test_overrides_set_list_items_and_refuse_impossible_keys() -> None:
    params = {"train": {"phases": [{"steps": 3}]}}
    assert apply_overrides(params, {"train.phases[0].steps": 9})["train"]["phases"][0]["steps"] == 9
    assert apply_overrides(params, {"train.phases.0.steps": 7})["train"]["phases"][0]["steps"] == 7
    with pytest.raises(PreflightError, match=r"no item \[3\]"):
        apply_overrides(params, {"train.phases[3].steps": 1})
    with pytest.raises(PreflightError, match="dotted keys"):
        apply_overrides(params, {"train..x": 1})


def test_write_overrides_keeps_comments_and_refuses_a_bad_result(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text(encoding="utf-8")
    path.write_text(original, encoding="utf-8")
    write_overrides(
        path, {"tasks.haze.train": {"phases": [{"patch_size": 64, "batch_size": 4, "lr": 2e-3, "steps": 10}]}}
    )
    text = path.read_text(encoding="utf-8")
    assert "# The tasks `dvc repro` trains" in text  # comments survive
    assert yaml.safe_load(text)["tasks"]["haze"]["train"]["phases"][0]["lr"] == 2e-3
    before = path.read_bytes()
    with pytest.raises(PreflightError, match="tasks.rain.train.lrr"):
        write_overrides(path, {"tasks.rain.train.lrr": 1})
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))  # untouched, no temp file left
