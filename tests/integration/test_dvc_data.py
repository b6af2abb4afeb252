"""`dvc repro shard` in a temporary git copy of the repository, on the default params (the embedded data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ast_model.data.loaders import make_eval_loader, make_train_loader
from ast_model.data.shards import verify_shards

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPY = ["dvc.yaml", "params.yaml", ".gitignore", "requirements.txt", "ast_model", "pipelines"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture()
def repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC repository holding a copy of the project's code, dvc.yaml and params.yaml."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, work / name)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the stages' `python` is this venv's
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "PYTHONPATH": str(work),
    }
    _run(["git", "init", "-q"], work, env)
    _run([str(BIN / "dvc"), "init", "-q"], work, env)
    return work, env


def test_dvc_repro_shard_builds_verified_shards_and_is_then_up_to_date(repo) -> None:
    work, env = repo
    dvc = str(BIN / "dvc")
    _run([dvc, "repro", "shard"], work, env)

    lock = (work / "dvc.lock").read_text()
    assert "prepare:" in lock and "shard:" in lock
    params = yaml.safe_load((work / "params.yaml").read_text())
    datasets = params["data"]["datasets"]
    readers = params["data"]["max_nodes"] * params["data"]["max_procs_per_node"] * params["data"]["max_workers"]
    for name in datasets:
        for split in ("train", "val", "test"):
            shard_dir = work / "data/shards" / name / split
            index = verify_shards(shard_dir)
            assert index["samples"] > 0 and index["dataset"] == name and index["split"] == split
            assert sorted(p.name for p in shard_dir.glob("*.tar")) == [s["name"] for s in index["shards"]]
            assert (work / "data/prepared" / name / split / "manifest.json").is_file()
        assert len(verify_shards(work / "data/shards" / name / "train")["shards"]) >= readers
    # No staging debris, and the data is usable by the loaders.
    assert not [p for p in (work / "data/shards").iterdir() if p.name.startswith(".")]
    name = next(iter(datasets))
    first = next(iter(make_eval_loader(work / "data/shards" / name / "test")))
    assert first["input"].shape[:2] == (1, 3) and "degradation" in first["meta"]
    batch = next(
        iter(
            make_train_loader(
                work / "data/shards" / name / "train",
                patch_size=64,
                batch_size=2,
                batches_per_epoch=1,
                num_workers=0,
                seed=0,
                rank=0,
                world_size=1,
            )
        )
    )
    assert batch[0].shape == (2, 3, 64, 64)

    again = _run([dvc, "repro", "shard"], work, env)
    assert "didn't change, skipping" in again.stdout or "up to date" in again.stdout.lower()
    status = _run([dvc, "status", "shard"], work, env)
    assert "changed" not in status.stdout


def _fake_outputs(work: Path, tasks: list[str]) -> None:
    """Stand-ins for every stage's outputs, so `dvc commit` can record the pipeline without running it."""
    for folder in (
        "data/prepared/x",
        "data/shards/embedded_rain/test",
        "data/shards/embedded_raindrop/test",
        "data/shards/embedded_haze/test",
    ):
        (work / folder).mkdir(parents=True, exist_ok=True)
        (work / folder / "f").write_text("x")
    for task in tasks:
        (work / "models" / task).mkdir(parents=True)
        (work / "models" / task / "final.pt").write_text(task)
        (work / "metrics").mkdir(exist_ok=True)
        (work / "metrics" / f"{task}.json").write_text("{}")
        (work / "reports" / task / "samples").mkdir(parents=True)
        (work / "reports" / task / "samples" / "a.png").write_text(task)
        (work / "reports" / task / "registry.json").write_text("{}")
    # the paper-table stages: one ablation record per variant, every table's files
    (work / "reports" / "ablation").mkdir(parents=True)
    for variant in yaml.safe_load((work / "params.yaml").read_text())["tables"]["variants"]:
        (work / "reports" / "ablation" / f"{variant}.json").write_text("{}")
    for table in [f"table{i}" for i in range(1, 11)] + ["figure4"]:
        for suffix in (".md", ".csv") + ((".png",) if table == "figure4" else ()):
            (work / "reports" / f"{table}{suffix}").write_text(table)


def test_a_changed_task_param_reruns_that_task_only(repo) -> None:
    """foreach over `tasks`: train@/evaluate@/register@<task> depend on `train` and `tasks.<task>` only."""
    from pipelines.params import write_overrides

    work, env = repo
    dvc = str(BIN / "dvc")
    tasks = list(yaml.safe_load((work / "params.yaml").read_text())["tasks"])
    assert tasks == ["rain", "raindrop", "haze"]
    _fake_outputs(work, tasks)
    _run([dvc, "commit", "-f"], work, env)  # record every stage as done, without running it
    assert "up to date" in _run([dvc, "status"], work, env).stdout

    write_overrides(work / "params.yaml", {"tasks.raindrop.train.log_every": 5})
    changed = yaml.safe_load(_run([dvc, "status", "--json"], work, env).stdout)
    # tasks.raindrop is a params dep of all three of raindrop's stages, of no other stage
    assert sorted(changed) == ["evaluate@raindrop", "register@raindrop", "train@raindrop"], changed

    write_overrides(work / "params.yaml", {"tasks.raindrop.train.log_every": 10, "train.log_every": 20})
    changed = yaml.safe_load(_run([dvc, "status", "--json"], work, env).stdout)
    assert {"train@rain", "train@raindrop", "train@haze"} <= set(changed), changed  # shared keys: every task
    assert "prepare" not in changed and "shard" not in changed
