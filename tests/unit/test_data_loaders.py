"""Train and eval loaders: shapes, paired augmentation, determinism, rank/worker splitting, exact eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ast_model.data.files import encode_png
from ast_model.data.loaders import dist_info, make_eval_loader, make_train_loader, reader_shards
from ast_model.data.shards import ShardError, ShardSample, write_split
from ast_model.data.transforms import dihedral, paired_random_crop


def _flat_split(folder: Path, n: int, n_shards: int, h: int = 20, w: int = 28) -> Path:
    """Samples whose every pixel equals their id (input) and 255 - id (target): any crop reveals the id."""
    records = []
    for i in range(n):
        inp = np.full((h, w, 3), i, dtype=np.uint8)
        records.append(ShardSample(f"k{i:03d}", encode_png(inp), encode_png(255 - inp), {"width": w, "height": h}))
    write_split(folder, records, lambda r: r, n_shards=n_shards, info={})
    return folder


def _textured_split(folder: Path, n: int, n_shards: int, h: int = 20, w: int = 28) -> Path:
    """Random images with target = 255 - input: a pair stays consistent only under identical transforms."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        inp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        records.append(ShardSample(f"t{i:03d}", encode_png(inp), encode_png(255 - inp), {"width": w, "height": h}))
    write_split(folder, records, lambda r: r, n_shards=n_shards, info={})
    return folder


def _ids(loader) -> tuple[int, list[int]]:
    """(number of batches, ids of every sample seen)."""
    batches, ids = 0, []
    for inp, _ in loader:
        batches += 1
        ids += [round(float(v) * 255) for v in inp[:, 0, 0, 0]]
    return batches, ids


def test_batches_have_the_promised_shape_range_and_pairing(tmp_path: Path) -> None:
    shards = _textured_split(tmp_path, 6, 2)
    loader = make_train_loader(
        shards, patch_size=16, batch_size=3, batches_per_epoch=5, num_workers=0, seed=0, rank=0, world_size=1
    )
    assert len(loader) == 5
    batches = list(loader)
    assert len(batches) == 5
    for inp, tgt in batches:
        assert inp.shape == tgt.shape == (3, 3, 16, 16) and inp.dtype == tgt.dtype == torch.float32
        assert 0 <= inp.min() and inp.max() <= 1
        # Same crop window and same dihedral transform on both sides of the pair.
        assert torch.allclose(tgt, 1 - inp, atol=1e-6)


def test_patch_equal_to_the_image_side_works_and_larger_fails(tmp_path: Path) -> None:
    shards = _textured_split(tmp_path, 2, 1, h=16, w=24)
    loader = make_train_loader(
        shards, patch_size=16, batch_size=2, batches_per_epoch=2, num_workers=0, seed=0, rank=0, world_size=1
    )
    assert all(inp.shape[-2:] == (16, 16) for inp, _ in loader)
    with pytest.raises(ShardError, match="patch_size 17 exceeds the smallest image"):
        make_train_loader(
            shards, patch_size=17, batch_size=2, batches_per_epoch=2, num_workers=0, seed=0, rank=0, world_size=1
        )


def test_same_seed_same_batches_other_seed_or_epoch_different(tmp_path: Path) -> None:
    shards = _textured_split(tmp_path, 8, 2)

    def first(seed: int, epoch: int = 0) -> torch.Tensor:
        loader = make_train_loader(
            shards,
            patch_size=12,
            batch_size=2,
            batches_per_epoch=3,
            num_workers=0,
            seed=seed,
            epoch=epoch,
            rank=0,
            world_size=1,
        )
        return torch.cat([inp for inp, _ in loader])

    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))
    assert not torch.equal(first(1), first(1, epoch=1))


def test_each_iteration_is_a_new_epoch_unless_set_epoch(tmp_path: Path) -> None:
    shards = _textured_split(tmp_path, 8, 2)
    loader = make_train_loader(
        shards, patch_size=12, batch_size=2, batches_per_epoch=2, num_workers=0, seed=0, rank=0, world_size=1
    )
    e0, e1 = torch.cat([i for i, _ in loader]), torch.cat([i for i, _ in loader])
    assert not torch.equal(e0, e1)
    loader.set_epoch(0)
    assert torch.equal(torch.cat([i for i, _ in loader]), e0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_read_disjoint_samples_and_the_same_number_of_batches(tmp_path: Path, num_workers: int) -> None:
    # 9 samples in 4 uneven shards (3, 2, 2, 2): rank 0 owns 5 samples, rank 1 owns 4.
    shards = _flat_split(tmp_path, 9, 4)
    seen = []
    for rank in (0, 1):
        loader = make_train_loader(
            shards,
            patch_size=8,
            batch_size=2,
            batches_per_epoch=12,
            num_workers=num_workers,
            seed=0,
            rank=rank,
            world_size=2,
        )
        seen.append(_ids(loader))
    (n0, ids0), (n1, ids1) = seen
    assert n0 == n1 == 12
    assert set(ids0).isdisjoint(ids1)
    assert set(ids0) | set(ids1) == set(range(9))  # resampling reaches every sample of each rank's shards


def test_workers_of_one_rank_read_disjoint_shards() -> None:
    urls = [f"s{i}" for i in range(8)]
    readers = [reader_shards(urls, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(sum(readers, [])) == sorted(urls)
    assert all(len(r) == 2 for r in readers)


def test_too_few_shards_for_ranks_times_workers_fails_clearly(tmp_path: Path) -> None:
    shards = _flat_split(tmp_path, 4, 2)
    with pytest.raises(ShardError, match=r"2 shard\(s\) for 2 rank\(s\) x 2 worker\(s\) = 4 readers"):
        make_train_loader(
            shards, patch_size=8, batch_size=1, batches_per_epoch=1, num_workers=2, seed=0, rank=0, world_size=2
        )


def test_train_loader_verifies_its_shards(tmp_path: Path) -> None:
    shards = _flat_split(tmp_path, 4, 2)
    path = shards / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    # Rank 0 reads shard 0 only: fine. Rank 1 reads the damaged shard 1.
    make_train_loader(
        shards, patch_size=8, batch_size=1, batches_per_epoch=1, num_workers=0, seed=0, rank=0, world_size=2
    )
    with pytest.raises(ShardError, match="shard-000001.tar"):
        make_train_loader(
            shards, patch_size=8, batch_size=1, batches_per_epoch=1, num_workers=0, seed=0, rank=1, world_size=2
        )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_loader_is_one_exact_stable_pass(tmp_path: Path, num_workers: int) -> None:
    shards = _flat_split(tmp_path, 7, 3)
    loader = make_eval_loader(shards, num_workers=num_workers)
    first = [s["key"] for s in loader]
    assert len(loader) == 7
    assert sorted(first) == [f"k{i:03d}" for i in range(7)] and len(set(first)) == 7
    assert [s["key"] for s in loader] == first  # same order on every pass
    if num_workers == 0:
        assert first == [f"k{i:03d}" for i in range(7)]  # index order = written order
    sample = next(iter(loader))
    assert sample["input"].shape == sample["target"].shape == (1, 3, 20, 28)
    assert sample["meta"]["width"] == 28


def test_dist_info_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist_info() == (3, 4)
    assert dist_info(1, 2) == (1, 2)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert dist_info() == (0, 1)


def test_paired_crop_and_dihedral_primitives() -> None:
    rng = np.random.default_rng(0)
    a = np.arange(4 * 6 * 1).reshape(4, 6, 1)
    x, y = paired_random_crop(a, a + 100, 4, rng)
    assert x.shape == (4, 4, 1) and np.array_equal(y, x + 100)
    transforms = {dihedral(np.arange(4).reshape(2, 2, 1), k).tobytes() for k in range(8)}
    assert len(transforms) == 8  # all 8 symmetries are distinct
    with pytest.raises(ValueError, match="smaller than the 5x5 patch"):
        paired_random_crop(a, a, 5, rng, key="k")
