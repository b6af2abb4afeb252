"""The training loop: progressive phases as one run, validation, checkpoints, NaN guard, progress.

Steps are grouped in *segments* that end at every ``save_every`` multiple and at every phase end. Each
segment gets a fresh loader seeded by its first step, and each ends with a checkpoint, so a run resumed
from any checkpoint sees the same batches, LR and RNG draws as the uninterrupted run (bit-identical
weights in deterministic mode).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ast_model.data.phases import phase_at
from ast_model.train.data import TrainData
from ast_model.train.distributed import DistInfo, all_sum
from ast_model.train.engine import compute_dtype, export_weights, master_state_dict, set_lr
from ast_model.train.history import HISTORY_FILE, read_history, write_history
from ast_model.train.loss import build_loss
from ast_model.train.lr_schedule import lr_at
from ast_model.train.resume import CheckpointStore
from ast_model.train.spec import RunSpec
from ast_model.train.tracker import Tracker
from ast_model.train.validate import ValResult, validate


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf on some rank; training stopped without writing a checkpoint."""


@dataclass
class LoopState:
    """What the loop needs to continue; saved with every checkpoint.

    Attributes:
        step: optimizer steps done.
        images: training images seen (all ranks).
        best_psnr: best validation PSNR so far (None: no validation yet).
        best_step: the step it was reached at.
        train_seconds: wall time spent training (excluding validation and checkpoints).
    """

    step: int = 0
    images: int = 0
    best_psnr: float | None = None
    best_step: int | None = None
    train_seconds: float = 0.0


class Trainer:
    """Runs a :class:`RunSpec` on a DeepSpeed engine.

    Args:
        spec: the resolved run.
        engine: from :func:`ast_model.train.engine.build_engine`.
        data: batches and validation images.
        store: the checkpoint folder.
        tracker: MLflow on rank 0, a null tracker elsewhere.
        info: this rank.
    """

    def __init__(
        self, spec: RunSpec, engine: Any, data: TrainData, store: CheckpointStore, tracker: Tracker, info: DistInfo
    ) -> None:
        self.spec, self.cfg, self.engine, self.data = spec, spec.train, engine, data
        self.store, self.tracker, self.info = store, tracker, info
        self.patch_phases = [s.patch_phase() for s in spec.phases]
        self.dtype = compute_dtype(engine)
        self.loss_fn = build_loss(self.cfg.loss, self.cfg.loss_eps)
        self.last_val: ValResult | None = None
        self._window: list[float] = []  # per-step losses since the last log
        self._since_val: list[float] = []  # per-step losses since the last validation
        self.history_path = Path(spec.out_dir) / HISTORY_FILE
        self.history: list[dict[str, float]] = []

    # -- the run ------------------------------------------------------------------------------------
    def run(self, state: LoopState) -> LoopState:
        """Train from ``state`` to the end of the last phase, then export the final weights."""
        total = self.spec.total_steps
        self.history = self._read_history(state.step)
        # In a log file (DVC, Prefect, a scheduler) a bar redrawn every second would flood it.
        bar = tqdm(
            total=total,
            initial=state.step,
            unit="step",
            disable=not self.info.is_main,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            desc=self.cfg.experiment,
        )
        self.engine.train()
        try:
            while state.step < total:
                self._segment(state, bar)
        finally:
            bar.close()
        self._finish(state)
        return state

    def _segment(self, state: LoopState, bar: tqdm) -> None:
        """Steps up to the next checkpoint (a ``save_every`` multiple or the phase end), then save."""
        index, _, in_phase = phase_at(self.patch_phases, state.step)
        phase = self.spec.phases[index]
        phase_end = state.step - in_phase + phase.steps
        seg_end = min(phase_end, (state.step // self.cfg.save_every + 1) * self.cfg.save_every)
        accum = self.cfg.grad_accum
        batches = iter(self.data.train_batches(phase, start_step=state.step, batches=(seg_end - state.step) * accum))
        tick = time.perf_counter()
        window_start, window_steps = tick, 0
        for step in range(state.step, seg_end):
            loss = self._optimizer_step(batches, phase.index, step)
            now = time.perf_counter()
            state.train_seconds += now - tick
            tick = now
            state.step, state.images = step + 1, state.images + phase.global_batch
            self._window.append(loss)
            self._since_val.append(loss)
            window_steps += 1
            bar.update(1)
            if state.step % self.cfg.log_every == 0 or state.step == seg_end:
                self._log_train(state, phase.index, window_steps / max(now - window_start, 1e-9), bar)
                window_start, window_steps = time.perf_counter(), 0
            every = self.cfg.validation.every_steps
            if (every and state.step % every == 0) or state.step == phase_end:
                self._validate(state)
                tick = window_start = time.perf_counter()  # validation is not training time
                window_steps = 0
        self.store.save(self.engine, state.step, asdict(state), keep=self.cfg.keep_checkpoints)

    def _optimizer_step(self, batches: Iterator, phase_index: int, step: int) -> float:
        """One optimizer step (``grad_accum`` micro batches); returns the loss averaged over ranks."""
        lr = lr_at(self.spec.phases, step, floor=self.cfg.schedule.min_lr)
        set_lr(self.engine, lr)
        total = 0.0
        for _ in range(self.cfg.grad_accum):
            try:
                x, y = next(batches)
            except StopIteration:
                raise RuntimeError(f"rank {self.info.rank}: the loader ended early at step {step}") from None
            x = x.to(self.info.device, self.dtype, non_blocking=True)
            y = y.to(self.info.device, non_blocking=True)
            loss = self.loss_fn(self.engine(x), y)
            value = loss.item()
            finite = math.isfinite(value)
            # One collective for both: the mean loss to log, and whether any rank went non-finite, so
            # every rank stops at the same step instead of some waiting forever in the next all-reduce.
            loss_sum, bad = all_sum([value if finite else 0.0, 0.0 if finite else 1.0], self.info.device)
            if bad:
                self._non_finite(step, phase_index, lr, int(bad), value)
            self.engine.backward(loss)
            self.engine.step()
            total += loss_sum / self.info.world_size
        return total / self.cfg.grad_accum

    def _non_finite(self, step: int, phase_index: int, lr: float, ranks: int, value: float) -> None:
        marker = self.store.marker()
        last = f"{self.store.root / marker['tag']} (step {marker['step']})" if marker else "none (no checkpoint yet)"
        msg = (
            f"non-finite loss at step {step + 1} (phase {phase_index}, lr {lr:.3g}) on {ranks} of "
            f"{self.info.world_size} rank(s) (this rank: {value}); training stopped without saving. "
            f"Last good checkpoint: {last}. {self._non_finite_hint()}"
        )
        raise NonFiniteLossError(msg)

    def _non_finite_hint(self) -> str:
        """What to change, under the profile's own section; fp32 is suggested only to a half-precision run."""
        section = self.spec.profile
        fixes = [f"lower the phase lr ({section}.phases[].lr)"]
        if not self.cfg.grad_clip:
            fixes.append(f"set {section}.grad_clip (e.g. 1.0)")
        else:
            fixes.append(f"lower {section}.grad_clip (now {self.cfg.grad_clip:g})")
        if self.cfg.precision != "fp32":
            fixes.append(f"use {section}.precision: fp32 (now {self.cfg.precision})")
        return "Fix: " + ", or ".join(fixes) + "."

    # -- reporting ----------------------------------------------------------------------------------
    def _log_train(self, state: LoopState, phase_index: int, steps_per_s: float, bar: tqdm) -> None:
        loss = sum(self._window) / max(len(self._window), 1)
        self._window.clear()
        phase = self.spec.phases[phase_index]
        remaining = self.spec.total_steps - state.step
        metrics = {
            "train/loss": loss,
            "train/lr": lr_at(self.spec.phases, state.step - 1, floor=self.cfg.schedule.min_lr),
            "train/steps_per_s": steps_per_s,
            "train/images_per_s": steps_per_s * phase.global_batch,
            "train/eta_s": remaining / steps_per_s if steps_per_s > 0 else float("nan"),
            "train/phase": float(phase_index),
            "train/patch_size": float(phase.patch_size),
        }
        bar.set_postfix(
            phase=phase_index,
            loss=f"{loss:.4f}",
            lr=f"{metrics['train/lr']:.2e}",
            img_s=f"{metrics['train/images_per_s']:.1f}",
            refresh=False,
        )
        self.tracker.log_metrics(metrics, state.step)

    def _validate(self, state: LoopState) -> None:
        res = validate(self.engine.module, self.data.val_samples(), self.cfg.validation, self.info, dtype=self.dtype)
        self.last_val = res
        if res.count == 0:
            return
        self._record(state, res)
        self.tracker.log_metrics(
            {"val/psnr": res.psnr, "val/ssim": res.ssim, "val/input_psnr": res.input_psnr}, state.step
        )
        for key, image in res.samples:
            self.tracker.log_image(f"val/{key}", image, state.step)
        if self.info.is_main:
            tqdm.write(
                f"[{self.cfg.experiment}] step {state.step}: val PSNR {res.psnr:.3f} dB, SSIM {res.ssim:.4f} "
                f"(input {res.input_psnr:.3f} dB, {res.count} images)"
            )
        if state.best_psnr is None or res.psnr > state.best_psnr:  # same decision on every rank
            state.best_psnr, state.best_step = res.psnr, state.step
            self._export("best.pt", state, master_state_dict(self.engine))

    def _record(self, state: LoopState, res: ValResult) -> None:
        """Append one row to the learning curve and rewrite ``history.csv`` (rank 0, atomically)."""
        loss = sum(self._since_val) / len(self._since_val) if self._since_val else float("nan")
        self._since_val.clear()
        self.history.append(
            {
                "step": state.step,
                "images": state.images,
                "train_seconds": round(state.train_seconds, 3),
                "train_loss": loss,
                "val_psnr": res.psnr,
                "val_ssim": res.ssim,
                "input_psnr": res.input_psnr,
                "input_ssim": res.input_ssim,
                "gain_psnr_db": res.psnr - res.input_psnr,
                "gain_ssim": res.ssim - res.input_ssim,
            }
        )
        if self.info.is_main:
            write_history(self.history, self.history_path)

    def _read_history(self, step: int) -> list[dict[str, float]]:
        """The rows a resumed run already wrote, up to its checkpoint's step (later rows are redone)."""
        if step == 0 or not self.history_path.is_file():
            return []
        return [r for r in read_history(self.history_path) if r["step"] <= step]

    def _export(self, name: str, state: LoopState, weights: dict[str, torch.Tensor]) -> Path | None:
        if not self.info.is_main:
            return None
        meta = {
            "step": state.step,
            "experiment": self.cfg.experiment,
            "profile": self.spec.profile,
            "tracking_run_id": self.tracker.run_id,
            "val_psnr": self.last_val.psnr if self.last_val else None,
            "val_ssim": self.last_val.ssim if self.last_val else None,
            **self.spec.tags,
        }
        path = Path(self.spec.out_dir) / name
        return export_weights(weights, self.spec.model_name, self.spec.model_kwargs, path, meta)

    def _finish(self, state: LoopState) -> None:
        weights = master_state_dict(self.engine)  # collective
        self._export("final.pt", state, weights)
        if self.last_val is not None and self.last_val.count:
            self.tracker.log_metrics(
                {"final/val_psnr": self.last_val.psnr, "final/val_ssim": self.last_val.ssim}, state.step
            )
