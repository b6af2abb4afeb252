"""DeepSpeed checkpoints for resume: saved on every rank, committed by one marker file.

Layout of a checkpoint folder (``checkpoints/<experiment>/``)::

    run.json              the run's fingerprint and MLflow run id (written when the run starts)
    latest.json           the last *complete* checkpoint: tag, step and loop state (atomic)
    step_00000100/        DeepSpeed's files (model, ZeRO partitions, optimizer) + rng_rank<N>.pt

DeepSpeed writes its own ``latest`` file on rank 0 without waiting for the other ranks' ZeRO files; a
kill at that moment would leave a ``latest`` that points at a partial checkpoint. ``latest.json`` is
written only after ``save_checkpoint``'s closing barrier, so it always names a whole checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ast_model.data.files import atomic_write_json, atomic_writer
from ast_model.train.distributed import DistInfo, barrier, rng_state, set_rng_state

MARKER = "latest.json"
RUN_FILE = "run.json"
TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    """Checkpoint tag of global step ``step`` (sorts by step)."""
    return f"{TAG_PREFIX}{step:08d}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is absent."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _to_torch(state: dict[str, Any]) -> dict[str, Any]:
    """RNG state with NumPy's array as a tensor, so it loads with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def _from_torch(state: dict[str, Any]) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state["numpy"]
    return {**state, "numpy": (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)}


class CheckpointStore:
    """Save and restore DeepSpeed engine checkpoints plus each rank's RNG state.

    Args:
        root: the checkpoint folder (shared by all ranks: a shared filesystem across nodes).
        info: this process's place in the job.
    """

    def __init__(self, root: str | Path, info: DistInfo) -> None:
        self.root = Path(root)
        self.info = info

    def marker(self) -> dict[str, Any] | None:
        """The last complete checkpoint's record, or None."""
        return read_json(self.root / MARKER)

    def run_record(self) -> dict[str, Any] | None:
        """``run.json``: fingerprint and MLflow run id of the run these checkpoints belong to."""
        return read_json(self.root / RUN_FILE)

    def write_run_record(self, record: dict[str, Any]) -> None:
        """Write ``run.json`` (rank 0 only; atomic)."""
        if self.info.is_main:
            atomic_write_json(self.root / RUN_FILE, record)

    def clear(self) -> None:
        """Remove every checkpoint and the run record (rank 0), e.g. when the config changed; all ranks wait."""
        if self.info.is_main:
            for folder in self.root.glob(f"{TAG_PREFIX}*"):
                shutil.rmtree(folder, ignore_errors=True)
            for name in (MARKER, RUN_FILE):
                (self.root / name).unlink(missing_ok=True)
        barrier()

    def save(self, engine: Any, step: int, state: dict[str, Any], *, keep: int) -> str:
        """Checkpoint after ``step`` optimizer steps (a collective: every rank calls it).

        Args:
            engine: the DeepSpeed engine.
            step: optimizer steps done.
            state: loop state to restore (JSON-able).
            keep: complete checkpoints to keep; older ones are deleted.

        Returns:
            The tag written.
        """
        tag = tag_for(step)
        folder = self.root / tag
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_writer(folder / f"rng_rank{self.info.rank}.pt") as fh:
            torch.save(_to_torch(rng_state()), fh)
        # Ends with a barrier: after it every rank's files are on disk.
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"loop": state}, save_latest=False)
        if self.info.is_main:
            atomic_write_json(
                self.root / MARKER, {"tag": tag, "step": step, "world_size": self.info.world_size, "state": state}
            )
            self._prune(keep, current=tag)
        barrier()  # nobody starts the next step's save into a folder that rank 0 is pruning
        return tag

    def load(self, engine: Any, marker: dict[str, Any]) -> dict[str, Any]:
        """Restore the engine (weights, optimizer, ZeRO partitions) and this rank's RNG from ``marker``.

        Returns:
            The loop state saved with the checkpoint.

        Raises:
            RuntimeError: the checkpoint was written by a different number of ranks, or is incomplete.
        """
        if marker["world_size"] != self.info.world_size:
            raise RuntimeError(
                f"{self.root / marker['tag']} was written by {marker['world_size']} ranks, this run has "
                f"{self.info.world_size}: resume needs the same world size (or start fresh with --fresh)"
            )
        path, _ = engine.load_checkpoint(
            str(self.root), tag=marker["tag"], load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {self.root / marker['tag']}")
        rng_file = self.root / marker["tag"] / f"rng_rank{self.info.rank}.pt"
        if not rng_file.is_file():
            raise RuntimeError(f"{rng_file} missing: the checkpoint is incomplete")
        set_rng_state(_from_torch(torch.load(rng_file, weights_only=True)))
        return marker["state"]

    def _prune(self, keep: int, *, current: str) -> None:
        tags = sorted(p.name for p in self.root.glob(f"{TAG_PREFIX}*") if p.is_dir())
        for name in tags[: max(len(tags) - keep, 0)]:
            if name != current:
                shutil.rmtree(self.root / name, ignore_errors=True)
