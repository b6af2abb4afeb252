"""The train stage refuses a bad configuration before starting any process, naming every problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.stages import train as stage
from tests.shards import write_tiny_split
from tests.tiny_pipeline import TINY_AST

GOOD = {
    "model": {"name": "ast_t"},
    "train": {
        "experiment": "check",
        "dataset": "tiny",
        "model_overrides": TINY_AST,
        "phases": [{"patch_size": 64, "batch_size": 4, "lr": 1e-3, "steps": 4}],
    },
}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    write_tiny_split(tmp_path / "shards" / "tiny" / "train", 4, 2)
    write_tiny_split(tmp_path / "shards" / "tiny" / "val", 1, 1)
    return tmp_path


def _main(repo: Path, params: dict, *extra: str) -> int:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return stage.main(
        [
            "--params",
            str(path),
            "--shards",
            str(repo / "shards"),
            "--out",
            str(repo / "models"),
            "--checkpoints",
            str(repo / "ckpt"),
            *extra,
        ]
    )


def test_good_config_passes_the_check_and_prints_the_plan(repo: Path, capsys) -> None:
    assert _main(repo, GOOD, "--check", "--nproc-per-node", "2") == 0
    out = capsys.readouterr().out
    assert "2 process(es) via torchrun" in out and "micro 2 x accum 1 x 2" in out
    assert not (repo / "ckpt").exists()  # --check starts nothing and writes nothing


def test_every_problem_is_named_and_nothing_starts(repo: Path, capsys) -> None:
    bad = {
        **GOOD,
        "train": {
            **GOOD["train"],
            "num_workers": 1,
            "precision": "fp16",
            "phases": [{"patch_size": 128, "batch_size": 3, "lr": 1e-3, "steps": 4}],
        },
    }
    assert _main(repo, bad, "--nproc-per-node", "3") == 2
    err = capsys.readouterr().err
    assert "batch_size=3 does not divide into world size 3" not in err  # 3 / (3 x 1) divides
    assert "3 readers" in err and "only 2 training shard(s)" in err
    assert "fp16 needs a GPU" in err
    assert "patch_size=128 is larger than the smallest training image (64 px)" in err
    assert not (repo / "ckpt").exists() and not (repo / "models").exists()


def test_batch_that_does_not_divide_over_the_ranks(repo: Path, capsys) -> None:
    assert _main(repo, GOOD, "--nproc-per-node", "3") == 2
    err = capsys.readouterr().err
    assert "train.phases[0].batch_size=4 does not divide into world size 3" in err


def test_unknown_key_and_missing_profile(repo: Path, capsys) -> None:
    assert _main(repo, {**GOOD, "train": {**GOOD["train"], "lr_initial": 1e-3}}) == 2
    assert "unknown key(s) train.lr_initial" in capsys.readouterr().err
    assert _main(repo, GOOD, "--profile", "train_nope") == 2
    assert "no section 'train_nope'" in capsys.readouterr().err
    assert _main(repo, {**GOOD, "model": {"name": "ast_t", "embed_dims": 4}}) == 2
    assert "embed_dims" in capsys.readouterr().err


def test_missing_shards_are_reported(repo: Path, capsys) -> None:
    assert _main(repo, {**GOOD, "train": {**GOOD["train"], "dataset": "absent"}}) == 2
    assert "no complete shard index" in capsys.readouterr().err
