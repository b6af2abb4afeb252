"""One worker's whole training run: join the job, decide resume vs fresh, build, train, summarise.

Every rank calls :func:`train` with the same :class:`~ast_model.train.spec.RunSpec`. Rank 0 takes the
shared decisions (resume or not, the tracker run) and broadcasts them, so the ranks never disagree.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ast_model import create_model
from ast_model.artifacts import ModelDir, TrainingSummary
from ast_model.data.files import atomic_write_json
from ast_model.train.config import deepspeed_config
from ast_model.train.data import ShardData, TrainData
from ast_model.train.distributed import broadcast_object, init_distributed, seed_everything
from ast_model.train.engine import build_engine
from ast_model.train.init import start_as_identity
from ast_model.train.loop import LoopState, NonFiniteLossError, Trainer
from ast_model.train.lr_schedule import lr_at
from ast_model.train.resume import CheckpointStore
from ast_model.train.spec import RunSpec, changed_keys
from ast_model.train.tracker import NullTracker, Tracker

log = logging.getLogger("ast_model.train")

ResumePolicy = Literal["auto", "never", "must"]
# (run id to resume or None, run id of an abandoned older run or None) -> the rank-0 tracker
TrackerFactory = Callable[[str | None, str | None], Tracker]


class ResumeError(RuntimeError):
    """``--resume-only`` (policy ``must``) cannot resume: no record, no complete checkpoint, or another
    configuration. A user decision (rerun without it, or with ``--fresh``), not a bug."""


@dataclass(frozen=True)
class TrainResult:
    """How a run ended (on every rank).

    Attributes:
        state: the final loop state.
        run_id: the tracker's run id (None without a tracker).
        resumed_from: the step the run resumed from (None: started fresh).
        final_path: the exported final weights.
    """

    state: LoopState
    run_id: str | None
    resumed_from: int | None
    final_path: str


def configure_logging(rank: int) -> None:
    """Rank-prefixed log lines; rank 0 at INFO, others at WARNING; DeepSpeed's chatter at WARNING.

    Process-wide (the root logger): for command-line entry points only, never called by the library.
    """
    logging.basicConfig(
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if rank == 0 else logging.WARNING,
        force=True,
    )
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - deepspeed is a pipeline dependency
        pass


def _decide(store: CheckpointStore, spec: RunSpec, policy: ResumePolicy) -> tuple[dict | None, str | None, str | None]:
    """(marker to resume from, tracker run id to continue, abandoned run id): rank 0's view."""
    record, marker = store.run_record(), store.marker()
    if record is None:
        if policy == "must":
            raise ResumeError(
                f"--resume-only: no run record in {store.root}: nothing to resume (run without --resume-only)"
            )
        return None, None, None
    old_run = record.get("tracking_run_id")
    if policy == "never":
        log.info("starting fresh (--fresh): removing %s", store.root)
        return None, None, old_run
    if record.get("fingerprint") != spec.fingerprint():
        try:
            keys = changed_keys(RunSpec.from_dict(record["spec"]).identity(), spec.identity())
        except Exception:  # an old or damaged record: we only want a helpful message
            keys = ["(unreadable old spec)"]
        msg = f"{store.root} belongs to a different configuration (changed: {', '.join(keys) or '?'})"
        if policy == "must":
            raise ResumeError(f"cannot resume: {msg} (run without --resume-only to start fresh)")
        log.warning("%s: starting fresh and removing those checkpoints", msg)
        return None, None, old_run
    if marker is None and policy == "must":
        raise ResumeError(f"--resume-only: no complete checkpoint in {store.root} (run without --resume-only)")
    return marker, old_run, None


def train(
    spec: RunSpec,
    *,
    data: TrainData | None = None,
    tracker_factory: TrackerFactory | None = None,
    resume: ResumePolicy = "auto",
) -> TrainResult:
    """Run (or continue) the training described by ``spec`` on this rank.

    Args:
        spec: the resolved run (identical on every rank).
        data: batches and validation images (default: the shards named in ``spec``).
        tracker_factory: builds the tracker on rank 0 (default: no tracking).
        resume: ``auto`` continues from the last complete checkpoint of the same configuration and
            starts fresh otherwise; ``never`` always starts fresh (deleting old checkpoints); ``must``
            fails unless it can resume.

    Returns:
        The :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss went NaN / Inf (the last checkpoint is left as it was).
    """
    cfg = spec.train
    info = init_distributed(spec.backend, spec.timeout_s)
    if info.world_size != spec.world_size:
        raise RuntimeError(f"spec was resolved for {spec.world_size} processes, but {info.world_size} joined")
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    store = CheckpointStore(spec.ckpt_dir, info)
    decision = None
    if info.is_main:  # one view of the shared folder, so every rank takes the same branch below
        marker, run_id, stale = _decide(store, spec, resume)
        leftovers = store.marker() is not None or store.run_record() is not None
        decision = (marker, run_id, stale, marker is None and leftovers)
    marker, run_id, stale, clear = broadcast_object(decision)
    if clear:
        store.clear()

    model = create_model(spec.model_name, **spec.model_kwargs)  # same seed: same init on every rank
    if cfg.start_as_identity:
        start_as_identity(model)
    if cfg.compile:  # compiles lazily at the first step of each patch size; validation stays eager
        model.compile_network(inference=False)
    torch.manual_seed(cfg.seed + 1 + info.rank)  # then a stream per rank (stochastic depth masks)
    ds_config = deepspeed_config(
        cfg,
        micro_batch=spec.phases[0].micro_batch,
        world_size=info.world_size,
        lr=lr_at(spec.phases, 0, floor=cfg.schedule.min_lr),
    )
    engine = build_engine(model, ds_config)
    state = LoopState()
    if marker is not None:
        state = LoopState(**store.load(engine, marker))
        log.info("resuming from %s at step %d of %d", store.root / marker["tag"], state.step, spec.total_steps)

    if data is None:  # verifies this rank's shards: fail before a tracker run exists
        data = ShardData(
            spec.train_dir,
            spec.val_dir,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            rank=info.rank,
            world_size=info.world_size,
        )
    tracker: Tracker = NullTracker()
    if info.is_main and tracker_factory is not None:
        tracker = tracker_factory(run_id, stale)
    run_id = broadcast_object(tracker.run_id if info.is_main else None)
    if not info.is_main:
        tracker = NullTracker(run_id)
    store.write_run_record({"fingerprint": spec.fingerprint(), "tracking_run_id": run_id, "spec": spec.to_dict()})
    if info.is_main:
        atomic_write_json(ModelDir(Path(spec.out_dir)).config, {**spec.to_dict(), "deepspeed": ds_config})

    trainer = Trainer(spec, engine, data, store, tracker, info)
    # A KeyboardInterrupt ends the tracker run as KILLED instead of leaving it RUNNING (the worker entry
    # point turns the launcher's SIGTERM into one: stop_on_sigterm). The next launch resumes.
    try:
        state = trainer.run(state)
    except NonFiniteLossError as exc:
        log.error("%s", exc)
        tracker.finish("FAILED", str(exc))
        raise
    except KeyboardInterrupt as exc:
        tracker.finish("KILLED", str(exc) or "interrupted")
        raise
    except BaseException as exc:
        tracker.finish("FAILED", f"{type(exc).__name__}: {exc}")
        raise
    final = str(Path(spec.out_dir) / "final.pt")
    if info.is_main:
        model_dir = ModelDir(Path(spec.out_dir))
        _summary(spec, state, trainer, run_id, marker).save(model_dir.summary)
        for path in (model_dir.summary, model_dir.config):
            tracker.log_artifact(path)
        tracker.finish("FINISHED")
        log.info("done: %s (best val PSNR %s at step %s)", final, state.best_psnr, state.best_step)
    return TrainResult(state, run_id, marker["step"] if marker else None, final)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def stop_on_sigterm() -> None:
    """Make SIGTERM (how launchers and Prefect cancel workers) raise KeyboardInterrupt in the main thread.

    Process-wide: for worker entry points only (the library never installs signal handlers).
    """
    if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
        signal.signal(signal.SIGTERM, _interrupt)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    torchrun starts its workers in sessions of their own: when the launcher is killed outright (SIGKILL, the
    OOM killer), its workers would otherwise train on as orphans and race a relaunch for the same checkpoint
    folder. With this they stop as on a cancel (with :func:`stop_on_sigterm`: KeyboardInterrupt, the tracker
    run ends KILLED, the last complete checkpoint stays).

    Process-wide: for worker entry points only, and only for a process a launcher started.

    Returns:
        Whether the request took effect (False off Linux or if the call failed).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    # No "has the parent already died?" check (getppid() == 1): a launcher may itself be PID 1 in a
    # container. A launcher that dies before this call (the worker's first seconds) is not covered.
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0


def _summary(
    spec: RunSpec, state: LoopState, trainer: Trainer, run_id: str | None, marker: dict | None
) -> TrainingSummary:
    val = trainer.last_val
    return TrainingSummary(
        experiment=spec.train.experiment,
        profile=spec.profile,
        model=spec.model_name,
        world_size=spec.world_size,
        steps=state.step,
        resumed_from_step=marker["step"] if marker else None,
        final_val_psnr=val.psnr if val else None,
        final_val_ssim=val.ssim if val else None,
        best_step=state.best_step,
        best_val_psnr=state.best_psnr,
        best_path="best.pt" if state.best_step is not None else None,
        tracking_run_id=run_id,
        images=state.images,
        tags=dict(spec.tags),
    )
