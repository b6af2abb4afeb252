"""Training and evaluation loaders over the WebDataset shards of one split.

Training (:func:`make_train_loader`): the shard list is split by rank, then by DataLoader worker, so no
two readers ever see the same sample; each reader resamples its own shards endlessly (reshuffled every
pass, plus a sample shuffle buffer) and ``with_epoch`` on the loader cuts the stream to the same number
of batches on every rank, so no rank waits for another at a collective. Each sample is decoded, cropped
(same window for input and target) and given one of the 8 dihedral transforms.

Evaluation (:func:`make_eval_loader`): one exact pass over every sample in index order, unbatched, at
full size.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ast_model.data.files import decode_image
from ast_model.data.shards import ShardError, read_index, shard_paths, verify_shards
from ast_model.data.transforms import paired_dihedral, paired_random_crop, to_tensor, to_tensor_batch

__all__ = ["TrainLoader", "EvalLoader", "make_train_loader", "make_eval_loader", "verify_shards", "dist_info"]


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the world size.

    Args:
        rank: explicit rank (wins when both are given).
        world_size: explicit world size.

    Returns:
        ``(rank, world_size)`` from the arguments, else an initialised torch.distributed, else the
        ``RANK``/``WORLD_SIZE`` environment a launcher sets, else ``(0, 1)``.
    """
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def reader_shards(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards one (rank, worker) reader owns: split by rank first, then by worker.

    Args:
        urls: all shards of the split, in index order.
        rank: the process rank.
        world_size: number of ranks.
        worker: DataLoader worker id (0 without workers).
        num_workers: DataLoader workers per rank (1 without workers).

    Returns:
        The reader's shards (disjoint from every other reader's).
    """
    return urls[rank::world_size][worker::num_workers]


class _ReaderShards(IterableDataset):
    """Endless ``{"url": ...}`` stream over this reader's shards, reshuffled on every pass."""

    def __init__(self, urls: list[str], rank: int, world_size: int, seed: int):
        super().__init__()
        self.urls, self.rank, self.world_size, self.seed = urls, rank, world_size, seed
        self.epoch = 0

    def __iter__(self) -> Iterator[dict[str, str]]:
        worker, num_workers = _worker()
        mine = reader_shards(self.urls, self.rank, self.world_size, worker, num_workers)
        if not mine:  # guarded in make_train_loader; an empty reader would spin forever
            raise ShardError(f"rank {self.rank} worker {worker}: no shards to read")
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/shards")
        while True:
            order = list(mine)
            rng.shuffle(order)
            for url in order:
                yield {"url": url}


class _PairPatches:
    """Pipeline stage: shuffle buffer, decode, paired crop and dihedral transform -> (input, target) uint8."""

    def __init__(self, patch_size: int, rank: int, seed: int, shuffle_buffer: int):
        self.patch_size, self.rank, self.seed, self.shuffle_buffer = patch_size, rank, seed, shuffle_buffer
        self.epoch = 0

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        worker, _ = _worker()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        if self.shuffle_buffer > 1:
            buffer_rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/buffer")
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=buffer_rng)(samples)
        for sample in samples:
            key = sample["__key__"]
            inp = decode_image(sample["input.png"], f"{key}.input.png ({sample.get('__url__', '?')})")
            tgt = decode_image(sample["target.png"], f"{key}.target.png ({sample.get('__url__', '?')})")
            inp, tgt = paired_random_crop(inp, tgt, self.patch_size, rng, key=key)
            inp, tgt, _ = paired_dihedral(inp, tgt, rng)
            yield inp, tgt


def _collate(samples: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = zip(*samples, strict=True)
    return to_tensor_batch(inputs), to_tensor_batch(targets)  # (B, 3, P, P) each


class TrainLoader:
    """Iterable of ``(input, target)`` float32 batches ``(B, 3, P, P)`` in [0, 1]; ``len()`` batches per epoch.

    Each ``iter()`` starts a new epoch (new shard order, shuffle and augmentation seeds) unless
    :meth:`set_epoch` is called first, which makes a resumed run reproduce the epoch it stopped in.
    """

    def __init__(
        self, pipeline: wds.DataPipeline, stages: list[Any], *, batches_per_epoch: int, num_workers: int, epoch: int
    ):
        self._pipeline, self._stages = pipeline, stages
        self.batches_per_epoch, self.num_workers, self.epoch = batches_per_epoch, num_workers, epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for stage in self._stages:
            stage.epoch = self.epoch  # read inside the workers, which receive a copy of the pipeline
        self.epoch += 1
        loader = wds.WebLoader(self._pipeline, batch_size=None, num_workers=self.num_workers, persistent_workers=False)
        # The epoch length lives on the loader, not the dataset: with_epoch on the dataset would count
        # per worker, and ranks with different worker counts or shard sizes would drift apart.
        return iter(loader.with_epoch(self.batches_per_epoch))


def make_train_loader(
    shard_dir: str | Path,
    *,
    patch_size: int,
    batch_size: int,
    batches_per_epoch: int,
    num_workers: int,
    seed: int,
    epoch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle_buffer: int = 64,
    verify: bool = True,
) -> TrainLoader:
    """The training loader of one split.

    Args:
        shard_dir: ``data/shards/<dataset>/<split>``.
        patch_size: square crop side P; at most the smallest image side of the split.
        batch_size: micro batch per rank B.
        batches_per_epoch: batches every rank yields per ``iter()``.
        num_workers: DataLoader worker processes per rank (0 = load in this process).
        seed: base seed; readers mix in epoch, rank and worker.
        epoch: the first epoch (resume).
        rank: this rank (default: torch.distributed, else ``RANK``, else 0).
        world_size: number of ranks (default: torch.distributed, else ``WORLD_SIZE``, else 1).
        shuffle_buffer: samples held for shuffling across shards (1 = none).
        verify: check this rank's shards against ``index.json`` (sha256) before returning.

    Returns:
        A :class:`TrainLoader` yielding ``(input, target)`` float32 tensors (B, 3, P, P) in [0, 1].

    Raises:
        ShardError: no complete index, too few shards for ``world_size x num_workers`` readers, a patch
            larger than the smallest image, or a shard that fails verification (named).
        ValueError: non-positive sizes.
    """
    sizes = {"patch_size": patch_size, "batch_size": batch_size, "batches_per_epoch": batches_per_epoch}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    rank, world_size = dist_info(rank, world_size)
    index = read_index(shard_dir)
    urls = shard_paths(shard_dir, index)
    readers = world_size * max(1, num_workers)
    if len(urls) < readers:
        raise ShardError(
            f"{shard_dir}: {len(urls)} shard(s) for {world_size} rank(s) x {max(1, num_workers)} worker(s) = "
            f"{readers} readers; each reader needs its own shard. Raise data.max_* in params.yaml and rerun "
            "the shard stage, or use fewer workers."
        )
    min_h, min_w = index.get("min_height"), index.get("min_width")
    if min_h is not None and patch_size > min(min_h, min_w):
        raise ShardError(f"{shard_dir}: patch_size {patch_size} exceeds the smallest image ({min_h}x{min_w} min h x w)")
    if verify:
        mine = [Path(u).name for u in urls[rank::world_size]]
        verify_shards(shard_dir, names=mine)
    source = _ReaderShards(urls, rank, world_size, seed)
    patches = _PairPatches(patch_size, rank, seed, shuffle_buffer)
    pipeline = wds.DataPipeline(
        source,
        wds.tarfile_to_samples(),
        patches,
        wds.batched(batch_size, collation_fn=_collate, partial=False),
    )
    return TrainLoader(
        pipeline, [source, patches], batches_per_epoch=batches_per_epoch, num_workers=num_workers, epoch=epoch
    )


def _eval_sample(sample: dict[str, Any]) -> dict[str, Any]:
    key = sample["__key__"]
    meta = json.loads(sample["json"])
    inp = decode_image(sample["input.png"], f"{key}.input.png")
    tgt = decode_image(sample["target.png"], f"{key}.target.png")
    return {"key": key, "input": to_tensor(inp), "target": to_tensor(tgt), "meta": meta}  # (1, 3, H, W)


class EvalLoader:
    """Iterable of ``{"key", "input" (1,3,H,W), "target" (1,3,H,W), "meta"}``; ``len()`` = samples."""

    def __init__(self, urls: list[str], samples: int, num_workers: int):
        self.urls, self.samples, self.num_workers = urls, samples, num_workers

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.urls),
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            wds.map(_eval_sample),
        )
        if self.num_workers == 0:
            return iter(pipeline)
        return iter(wds.WebLoader(pipeline, batch_size=None, num_workers=self.num_workers))


def make_eval_loader(shard_dir: str | Path, *, num_workers: int = 0, verify: bool = False) -> EvalLoader:
    """One exact pass over a split, one full-size sample at a time.

    With ``num_workers=0`` the order is the index order (shard by shard, samples as written, i.e. the
    manifest order); with workers, shards are dealt to workers and their samples interleave in a fixed,
    reproducible pattern. Every sample appears exactly once. No split by rank: every process that calls
    this sees the whole split.

    Args:
        shard_dir: ``data/shards/<dataset>/<split>``.
        num_workers: DataLoader workers (0 = this process).
        verify: check every shard's sha256 first.

    Returns:
        An :class:`EvalLoader`.

    Raises:
        ShardError: no complete index, or (``verify``) a shard that fails verification.
    """
    index = verify_shards(shard_dir) if verify else read_index(shard_dir)
    return EvalLoader(shard_paths(shard_dir, index), int(index["samples"]), num_workers)
