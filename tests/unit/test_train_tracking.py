"""MLflow plumbing: store location, flattened params, data-version and git tags, a run's lifecycle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.tracking import MlflowTracker, data_version_tags, flatten, git_tags, repo_root, tracking_uri


def test_repo_root_of_a_dvc_temp_experiment_is_the_original_repo(tmp_path: Path) -> None:
    temp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp.mkdir(parents=True)
    assert repo_root(temp) == tmp_path / "repo"
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "dvc.yaml").write_text("stages: {}\n")
    assert repo_root(tmp_path / "other" / "sub") == tmp_path / "other"


def test_tracking_uri_is_absolute_sqlite_unless_the_environment_says(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(tmp_path) == "http://mlflow:5000"


def test_flatten_nests_dicts_and_lists_of_dicts() -> None:
    flat = flatten({"train": {"phases": [{"patch_size": 64}, {"patch_size": 128}], "betas": [0.9, 0.999]}, "x": None})
    assert flat == {
        "train.phases.0.patch_size": "64",
        "train.phases.1.patch_size": "128",
        "train.betas": "[0.9, 0.999]",
        "x": "None",
    }


def test_data_version_comes_from_dvc_lock_and_the_index(tmp_path: Path) -> None:
    split = tmp_path / "data" / "shards" / "ds" / "train"
    split.mkdir(parents=True)
    (split / "index.json").write_text(json.dumps({"samples": 3}))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  shard:\n    cmd: x\n    outs:\n    - path: data/shards\n      md5: abc123.dir\n"
        "  other:\n    cmd: y\n    outs:\n    - path: models/m\n      md5: zzz\n"
    )
    tags = data_version_tags(split, tmp_path)
    assert tags["data.dvc.data/shards"] == "abc123.dir" and "data.dvc.models/m" not in tags
    assert len(tags["data.train_index_sha256"]) == 64


def test_git_tags(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert git_tags(tmp_path) == {}  # not a repository
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "dvc.yaml"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    tags = git_tags(tmp_path)
    assert len(tags["git.commit"]) == 40 and tags["mlflow.source.git.commit"] == tags["git.commit"]
    assert tags["git.dirty"] == "false"


@pytest.mark.slow
def test_a_run_is_created_resumed_and_finished(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = {"train": {"lr": 1e-3, "launch": {"nproc_per_node": 1}}}
    t = MlflowTracker.start(experiment="exp", run_name="train-x", params=params, tags={"git.commit": "abc"})
    t.log_metrics({"train/loss": 0.5, "train/eta_s": float("nan")}, step=3)
    t.log_image("val/key 1", np.zeros((8, 24, 3), np.uint8), step=3)
    # A resume continues the same run; a cosmetic param that changed keeps its first value.
    params2 = {"train": {"lr": 1e-3, "launch": {"nproc_per_node": 2}}}
    t2 = MlflowTracker.start(experiment="exp", run_name="train-x", params=params2, tags={}, resume_run_id=t.run_id)
    assert t2.run_id == t.run_id
    t2.finish("FINISHED")
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("exp").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params == {
        "train.lr": "0.001",
        "train.launch.nproc_per_node": "1",
    }
    assert run.data.metrics == {"train/loss": 0.5} and run.data.tags["git.commit"] == "abc"
    assert run.data.tags["train.resumes"] == "1"
    artifacts = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
    assert artifacts and all("val_key_1" in a for a in artifacts)
    assert any((tmp_path / "mlartifacts" / "exp").rglob("*.png"))  # beside the database, not ./mlruns


def test_the_training_data_is_an_mlflow_dataset_input_with_its_index_hash(tmp_path: Path, monkeypatch) -> None:
    """Lineage: from the run, the exact shards (index sha256, counts, DVC md5) and where they live."""
    from mlflow import MlflowClient

    from ast_model.artifacts import index_sha256
    from tests.shards import write_tiny_split

    split = tmp_path / "shards" / "tiny" / "train"
    write_tiny_split(split, n=4, n_shards=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    t = MlflowTracker.start(experiment="exp", run_name="train-x", params={}, tags={})
    t.log_dataset("tiny", split, context="training", tags={"data.dvc.data/shards": "abc123.dir"})
    t.finish("FINISHED")
    inputs = MlflowClient(uri).get_run(t.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    profile = json.loads(ds.profile)
    assert ds.name == "tiny/train" and ds.digest == index_sha256(split)[:32] and ds.source == split.resolve().as_uri()
    assert profile["samples"] == 4 and profile["shards"] == 2 and profile["index_sha256"] == index_sha256(split)
    assert profile["data.dvc.data/shards"] == "abc123.dir"
    assert [(tag.key, tag.value) for tag in inputs[0].tags] == [("mlflow.data.context", "training")]


def test_a_new_local_store_gets_its_tables_before_stages_start_side_by_side(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from pipelines.tracking import create_local_store

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    create_local_store(tmp_path)
    db = tmp_path / "mlflow.db"
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"experiments", "runs", "alembic_version"} <= tables
    before = db.stat().st_mtime_ns
    create_local_store(tmp_path)  # an existing store is not touched
    assert db.stat().st_mtime_ns == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a server store: nothing is contacted
    create_local_store(tmp_path)
