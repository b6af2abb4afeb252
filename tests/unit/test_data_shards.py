"""Shard writing, the index, verification and atomic publication."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ast_model.data.files import decode_image, encode_png, staged_dir
from ast_model.data.loaders import make_eval_loader
from ast_model.data.shards import ShardError, ShardSample, read_index, shard_count, verify_shards, write_split


def _records(n: int, seed: int = 0, h: int = 12, w: int = 20) -> list[ShardSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        inp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(ShardSample(f"s{i:03d}", encode_png(inp), encode_png(255 - inp), {"width": w, "height": h, "id": i}))
    return out


def _write(folder: Path, records: list[ShardSample], n_shards: int) -> dict:
    return write_split(folder, records, lambda r: r, n_shards=n_shards, info={"dataset": "t", "split": "test"})


def test_write_then_read_is_bit_exact(tmp_path: Path) -> None:
    records = _records(7)
    index = _write(tmp_path, records, 3)
    assert [s["samples"] for s in index["shards"]] == [3, 2, 2]
    assert index["samples"] == 7 and index["min_height"] == 12 and index["min_width"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json",
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    # Tar members are the PNG bytes exactly as given.
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members["s000.input.png"] == records[0].input_png
    assert members["s000.target.png"] == records[0].target_png
    assert json.loads(members["s000.json"]) == {"width": 20, "height": 12, "id": 0, "key": "s000"}
    # The eval loader gives back the same pixels, in the written order, each sample once.
    seen = list(make_eval_loader(tmp_path, verify=True))
    assert [s["key"] for s in seen] == [r.key for r in records]
    for sample, record in zip(seen, records, strict=True):
        expected = decode_image(record.input_png)
        got = (sample["input"][0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert sample["input"].shape == (1, 3, 12, 20)
        assert np.array_equal(got, expected)
        assert sample["meta"]["id"] == record.meta["id"]


def test_same_samples_give_identical_shards(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _records(5), 2)
    b = _write(tmp_path / "b", _records(5), 2)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_a_flipped_byte_is_caught_and_the_shard_named(tmp_path: Path) -> None:
    _write(tmp_path, _records(6), 3)
    verify_shards(tmp_path)
    path = tmp_path / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: shard does not match index\.json"):
        verify_shards(tmp_path)
    verify_shards(tmp_path, names=["shard-000000.tar", "shard-000002.tar"])  # the others are fine
    with pytest.raises(ShardError, match="shard-000001.tar"):
        make_eval_loader(tmp_path, verify=True)


def test_missing_shard_and_missing_index(tmp_path: Path) -> None:
    _write(tmp_path, _records(4), 2)
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(ShardError, match="shard-000000.tar: shard missing"):
        verify_shards(tmp_path)
    (tmp_path / "index.json").unlink()
    with pytest.raises(ShardError, match="index.json: missing"):
        read_index(tmp_path)


@pytest.mark.parametrize(
    ("n", "per", "minimum", "expected"),
    [(10, 64, 1, 1), (130, 64, 1, 3), (60, 64, 8, 8), (8, 1, 8, 8), (100, 10, 4, 10)],
)
def test_shard_count(n: int, per: int, minimum: int, expected: int) -> None:
    assert shard_count(n, per, minimum) == expected


def test_too_few_samples_for_the_readers_fails_early() -> None:
    with pytest.raises(ShardError, match="5 samples cannot fill 8 shards"):
        shard_count(5, 64, 8)


def test_interrupted_write_leaves_the_previous_version_and_no_debris(tmp_path: Path) -> None:
    final = tmp_path / "shards" / "test"
    with staged_dir(final) as staging:
        _write(staging, _records(4), 2)
    before = read_index(final)

    def failing(record: ShardSample) -> ShardSample:
        if record.key == "s003":
            raise KeyboardInterrupt  # what Ctrl-C or a killed stage looks like mid-write
        return record

    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final) as staging:
            write_split(staging, _records(6, seed=1), failing, n_shards=3, info={})
    assert read_index(final) == before
    verify_shards(final)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["test"]


def test_interrupted_first_write_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out" / "train"

    def failing(record: ShardSample) -> ShardSample:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        with staged_dir(final) as staging:
            write_split(staging, _records(2), failing, n_shards=1, info={})
    assert not final.exists() and list((tmp_path / "out").iterdir()) == []


def test_tar_members_are_readable_by_plain_tarfile(tmp_path: Path) -> None:
    _write(tmp_path, _records(2), 1)
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        names = tar.getnames()
        # One sample's members are adjacent (WebDataset groups consecutive members by key).
        assert names == [
            "s000.input.png",
            "s000.json",
            "s000.target.png",
            "s001.input.png",
            "s001.json",
            "s001.target.png",
        ]
        assert all(m.mtime == 0 for m in tar.getmembers())
        assert decode_image(tar.extractfile("s001.target.png").read()).shape == (12, 20, 3)
