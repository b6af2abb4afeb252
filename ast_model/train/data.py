"""Where training batches and validation images come from: the shards, or synthetic tensors.

The loop asks for the batches of one *segment* (the steps between two checkpoints) with ``epoch`` set to
the segment's first global step. The shard loader seeds its shard order, shuffle buffer, crops and flips
from ``(seed, epoch, rank, worker)``, so a run resumed from a checkpoint rebuilds exactly the batches the
uninterrupted run saw: this is how the loader position is restored without saving iterator state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from ast_model.train.config import ResolvedPhase


class TrainData(Protocol):
    """The loop's view of the data."""

    def train_batches(
        self, phase: ResolvedPhase, *, start_step: int, batches: int
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """``batches`` micro batches ``(input, target)`` of ``phase``'s patch and micro batch size."""
        ...

    def val_samples(self) -> Iterable[dict[str, Any]]:
        """Every validation sample once: ``{"key", "input" (1,3,H,W), "target" (1,3,H,W)}``."""
        ...


class ShardData:
    """Batches from ``data/shards/<dataset>/train`` and validation images from another split.

    Args:
        train_dir: the training split folder.
        val_dir: the validation split folder (None: no validation).
        seed: base seed of the loaders.
        num_workers: DataLoader workers per rank.
        rank: this rank.
        world_size: number of ranks.
    """

    def __init__(
        self,
        train_dir: str | Path,
        val_dir: str | Path | None,
        *,
        seed: int,
        num_workers: int,
        rank: int,
        world_size: int,
    ) -> None:
        from ast_model.data.loaders import verify_shards
        from ast_model.data.shards import read_index

        self.train_dir, self.val_dir = Path(train_dir), Path(val_dir) if val_dir else None
        self.seed, self.num_workers, self.rank, self.world_size = seed, num_workers, rank, world_size
        # Check this rank's shards once (sha256), not at every segment's loader, and every validation
        # shard too: a corrupt one must stop the run before step 1, not at the first validation after
        # the work since the last checkpoint (the train stage's pre-flight already hashed them: cached here).
        urls = [s["name"] for s in read_index(self.train_dir)["shards"]]
        verify_shards(self.train_dir, names=urls[rank::world_size])
        if self.val_dir is not None:
            verify_shards(self.val_dir)

    def train_batches(
        self, phase: ResolvedPhase, *, start_step: int, batches: int
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """See :class:`TrainData`."""
        from ast_model.data.loaders import make_train_loader

        return make_train_loader(
            self.train_dir,
            patch_size=phase.patch_size,
            batch_size=phase.micro_batch,
            batches_per_epoch=batches,
            num_workers=self.num_workers,
            seed=self.seed,
            # the loader reseeds per epoch; counting it in steps makes a resume replay the same batches
            epoch=start_step,
            rank=self.rank,
            world_size=self.world_size,
            verify=False,
        )

    def val_samples(self) -> Iterable[dict[str, Any]]:
        """See :class:`TrainData`."""
        if self.val_dir is None:
            return []
        from ast_model.data.loaders import make_eval_loader

        return make_eval_loader(self.val_dir)


class SyntheticData:
    """Seeded random pairs (target + noise): for benchmarks and fault tests, no shards needed.

    Args:
        seed: base seed; batches depend only on ``(seed, epoch, rank, index)``.
        rank: this rank.
        val_images: number of validation images.
        val_size: validation image side.
    """

    def __init__(self, seed: int = 0, rank: int = 0, val_images: int = 2, val_size: int = 64) -> None:
        self.seed, self.rank, self.val_images, self.val_size = seed, rank, val_images, val_size

    def _pair(self, gen: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.rand(shape, generator=gen)
        noisy = (target + 0.1 * torch.randn(shape, generator=gen)).clamp(0, 1)
        return noisy, target

    def train_batches(
        self, phase: ResolvedPhase, *, start_step: int, batches: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """See :class:`TrainData`."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + start_step) * 1_009 + self.rank)
        shape = (phase.micro_batch, 3, phase.patch_size, phase.patch_size)
        for _ in range(batches):
            yield self._pair(gen, shape)

    def val_samples(self) -> Iterator[dict[str, Any]]:
        """See :class:`TrainData`."""
        gen = torch.Generator().manual_seed(self.seed + 10_000)
        for i in range(self.val_images):
            x, y = self._pair(gen, (1, 3, self.val_size, self.val_size))
            yield {"key": f"synthetic-{i}", "input": x, "target": y}
