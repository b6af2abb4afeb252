"""Issue 13, finding 1: every shard a stage reads is verified before any work, hashed once, named when bad.

Real bytes are flipped in real tars; the checks are the production code paths (the stage's pre-flight, the
training data of a worker), not stand-ins.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import ast_model.data.shards as shards_mod
from ast_model.data.shards import ShardError, shard_problems, verify_shards
from pipelines.stages import train as train_stage
from tests.shards import write_tiny_split
from tests.tiny_pipeline import TINY_AST

GOOD = {
    "model": {"name": "ast_t"},
    "train": {
        "experiment": "pf",
        "dataset": "tiny",
        "model_overrides": TINY_AST,
        "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1e-3, "steps": 2}],
    },
}


def flip_byte(path: Path, offset: int = 700) -> None:
    """Corrupt a real tar in place: one byte inverted, same size (only the sha256 can tell)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def age(folder: Path, seconds: float = 3600) -> None:
    """Make files look settled (older than the racy window), as shards written by an earlier stage are."""
    for p in folder.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    """A private verification cache for every test (never the user's ~/.cache)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AST_CACHE_DIR", str(path))
    monkeypatch.setattr(shards_mod, "RACY_SECONDS", 0.0)  # shards here are written a moment ago
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_tiny_split(tmp_path / "shards" / "tiny" / "train", 4, 2)
    write_tiny_split(tmp_path / "shards" / "tiny" / "val", 2, 2)
    return tmp_path


def _count_hashes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = shards_mod.sha256_file

    def spy(path):  # the real hash, counted
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(shards_mod, "sha256_file", spy)
    return calls


# ------------------------------------------------------------------------------------------- the cache
def test_shards_are_hashed_once_then_cached_by_identity(repo: Path, cache_dir: Path, monkeypatch) -> None:
    split = repo / "shards" / "tiny" / "train"
    calls = _count_hashes(monkeypatch)
    verify_shards(split)
    assert sorted(calls) == ["shard-000000.tar", "shard-000001.tar"]
    verify_shards(split)
    verify_shards(split, names=["shard-000001.tar"])
    assert len(calls) == 2  # nothing hashed again: size, mtime, ctime and inode unchanged
    files = list((cache_dir / "verified-shards").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # one small file per split, no temporaries left
    assert not list(split.glob(".*"))  # nothing written into the DVC-tracked shard folder


def test_a_corruption_that_keeps_size_and_mtime_is_still_caught(repo: Path, monkeypatch) -> None:
    split = repo / "shards" / "tiny" / "val"
    verify_shards(split)  # cached as good
    shard = split / "shard-000001.tar"
    before = shard.stat()
    flip_byte(shard)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the write from the mtime
    assert shard.stat().st_size == before.st_size
    with pytest.raises(ShardError, match=r"val/shard-000001\.tar: shard does not match index\.json \(sha256"):
        verify_shards(split)


def test_every_bad_shard_is_listed_not_just_the_first(repo: Path) -> None:
    split = repo / "shards" / "tiny" / "train"
    flip_byte(split / "shard-000000.tar")
    (split / "shard-000001.tar").write_bytes(b"truncated")
    index, problems = shard_problems(split)
    assert index is not None and len(problems) == 2
    assert "shard-000000.tar: shard does not match index.json (sha256" in problems[0]
    assert "shard-000001.tar: shard does not match index.json (9 vs" in problems[1]
    assert all("rerun the shard stage" in p for p in problems)


def test_racy_files_are_not_cached(repo: Path, monkeypatch) -> None:
    monkeypatch.setattr(shards_mod, "RACY_SECONDS", 3600.0)  # every file counts as just written
    split = repo / "shards" / "tiny" / "train"
    calls = _count_hashes(monkeypatch)
    verify_shards(split)
    verify_shards(split)
    assert len(calls) == 4  # hashed both times: a same-tick change could otherwise keep its identity


# ------------------------------------------------------------------------------------------- the stage
def _train(repo: Path, params: dict, *extra: str) -> int:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return train_stage.main(
        [
            "--params",
            str(path),
            "--shards",
            str(repo / "shards"),
            "--out",
            str(repo / "models"),
            "--checkpoints",
            str(repo / "ckpt"),
            "--no-mlflow",
            *extra,
        ]
    )


def test_a_corrupt_val_shard_stops_the_train_stage_before_anything_starts(repo: Path, capsys) -> None:
    bad = repo / "shards" / "tiny" / "val" / "shard-000001.tar"
    flip_byte(bad)
    assert _train(repo, GOOD) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1, captured.err  # one line: what, where, how to fix
    assert err[0].startswith(f"train: {bad}: shard does not match index.json") and "rerun the shard stage" in err[0]
    assert "Traceback" not in captured.err
    assert not (repo / "ckpt").exists() and not (repo / "models").exists()  # no worker, no step 1


def test_corrupt_train_and_val_shards_are_listed_together(repo: Path, capsys) -> None:
    flip_byte(repo / "shards" / "tiny" / "train" / "shard-000000.tar")
    flip_byte(repo / "shards" / "tiny" / "val" / "shard-000000.tar")
    assert _train(repo, GOOD, "--check") == 2
    err = capsys.readouterr().err
    assert err.startswith("train: 2 problems in ") and "(section train), nothing started:" in err
    assert "train/shard-000000.tar" in err and "val/shard-000000.tar" in err


def test_worker_data_verifies_the_validation_split_before_step_1(repo: Path) -> None:
    # The worker-side check (a launcher-less run, or shards that changed after the stage's pre-flight).
    from ast_model.train.data import ShardData

    flip_byte(repo / "shards" / "tiny" / "val" / "shard-000000.tar")
    with pytest.raises(ShardError, match=r"val/shard-000000\.tar: shard does not match"):
        ShardData(
            repo / "shards" / "tiny" / "train",
            repo / "shards" / "tiny" / "val",
            seed=0,
            num_workers=0,
            rank=0,
            world_size=1,
        )
