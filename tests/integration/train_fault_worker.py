"""A training worker that fails on purpose (run by test_train_faults.py, directly or under torchrun).

Usage: ``python train_fault_worker.py MODE OUT_DIR`` with MODE ``nan`` (rank ``FAULT_RANK``'s batches turn
NaN from step 7) or ``die`` (that rank exits abruptly at step 6). Synthetic data: no shards needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ast_model.train.config import PhaseConfig, ScheduleConfig, TrainConfig, resolve_phases
from ast_model.train.data import SyntheticData
from ast_model.train.distributed import ensure_launcher_env
from ast_model.train.run import configure_logging, train
from ast_model.train.spec import RunSpec


class FaultyData(SyntheticData):
    """Synthetic pairs, until this rank's fault step."""

    def __init__(self, mode: str, fault: bool, rank: int) -> None:
        super().__init__(seed=0, rank=rank, val_images=1, val_size=64)
        self.mode, self.fault = mode, fault

    def train_batches(self, phase, *, start_step, batches):
        for i, (x, y) in enumerate(super().train_batches(phase, start_step=start_step, batches=batches)):
            step = start_step + i  # grad_accum 1: batch i of the segment starting at `start_step` is that step
            if self.fault and self.mode == "die" and step == 6:
                os._exit(17)  # a crashed rank: no exception handling, no goodbye
            if self.fault and self.mode == "nan" and step >= 6:
                x = torch.full_like(x, float("nan"))
            yield x, y


def main(mode: str, out: str) -> None:
    # An entry point, like the train stage's worker: it sets up the process (a lone process gets launcher
    # variables; rank-prefixed logging), which the library leaves to its caller.
    ensure_launcher_env()
    configure_logging(int(os.environ["RANK"]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cfg = TrainConfig(
        phases=[PhaseConfig(patch_size=64, batch_size=2 * world, lr=1e-3, steps=12)],
        save_every=4,
        log_every=2,
        schedule=ScheduleConfig(warmup_steps=2),
    )
    spec = RunSpec(
        train=cfg,
        profile="fault",
        model_name="ast_t",
        model_kwargs={"embed_dim": 8, "depths": [1] * 9, "win_size": 4},
        phases=resolve_phases(cfg, world_size=world, train_samples=None),
        world_size=world,
        train_dir="",
        val_dir=None,
        out_dir=str(Path(out) / "models"),
        ckpt_dir=str(Path(out) / "ckpt"),
        timeout_s=60,
    )
    fault_rank = int(os.environ.get("FAULT_RANK", "0"))
    train(spec, data=FaultyData(mode, rank == fault_rank, rank))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
