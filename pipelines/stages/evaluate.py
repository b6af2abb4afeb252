"""DVC stage ``evaluate``: score the trained model on the test split; log the result to its MLflow run.

Reads the ``evaluate`` section (how to score) and the training profile (``train``: which experiment and
dataset; with ``--task``, the task's profile and evaluate keys: :mod:`pipelines.params`), restores every
image of ``data/shards/<dataset>/<split>/`` with ``models/<experiment>/best.pt`` (or ``final.pt``), and writes:

- ``metrics/<experiment>.json`` (:class:`ast_model.artifacts.EvaluationMetrics`): PSNR / SSIM of the
  restored images and of the degraded inputs (the baseline), per image too, and what was scored;
- ``reports/<experiment>/samples/<key>.png``: ``input | restored | target`` side by side, for the first
  ``evaluate.sample_grids`` images.

Both are written atomically. The same metrics (``test/*``), the metrics file and the grids go to the
training's MLflow run (its id is in ``models/<experiment>/summary.json``); a new run is made when the store
does not know it.

Usage::

    python -m pipelines.stages.evaluate [--params params.yaml] [--task NAME] [--profile train] [--section evaluate]
        [--shards data/shards] [--models models] [--metrics metrics] [--reports reports]
        [--no-mlflow | --local-store] [--debug]

Every problem a user can fix is found before the first image is restored and reported together (exit
status 2, nothing written); see :func:`preflight`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GRID_GAP = 4  # white pixels between the three panels of a sample grid


def _uint8(x: Any) -> np.ndarray:
    """A loader tensor ``(1, 3, H, W)`` in [0, 1] (decoded from 8-bit PNG) back to its exact uint8 ``(H, W, 3)``."""
    from ast_model.data.files import to_uint8

    return to_uint8(x[0].permute(1, 2, 0).numpy())


def split_pairs(shard_dir: Path, max_images: int | None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(key, degraded, target)`` uint8 pairs of a split, in index order (shards verified first)."""
    from ast_model.data.loaders import make_eval_loader

    for i, sample in enumerate(make_eval_loader(shard_dir, verify=True)):
        if max_images is not None and i >= max_images:
            return
        yield str(sample["key"]), _uint8(sample["input"]), _uint8(sample["target"])


def sample_grid(degraded: np.ndarray, restored: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``input | restored | target`` side by side, white gaps between, as uint8 ``(H, W', 3)``."""
    from ast_model.eval.images import to_uint8

    gap = np.full((degraded.shape[0], GRID_GAP, 3), 255, np.uint8)
    return np.concatenate([to_uint8(degraded), gap, to_uint8(restored), gap, to_uint8(target)], axis=1)


class GridWriter:
    """Writes the first ``limit`` results as grids into a folder (the ``on_result`` of evaluate_pairs)."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit, self.written = folder, limit, []

    def __call__(self, key: str, degraded: np.ndarray, restored: np.ndarray, target: np.ndarray) -> None:
        """Save one grid while fewer than ``limit`` were written."""
        from ast_model.data.files import safe_name
        from ast_model.eval.images import save_png

        if len(self.written) < self.limit:
            self.written.append(
                save_png(self.folder / f"{safe_name(key)}.png", sample_grid(degraded, restored, target))
            )


def _stage_run(run_id: str | None, experiment: str, tags: dict[str, str]) -> tuple[Any, str]:
    """``(MlflowClient, run id)``: the training's run, or a new run when the store does not know it."""
    from pipelines.tracking import client, run_for_stage

    c = client()
    run_id, _ = run_for_stage(c, run_id, experiment=experiment, run_name=f"evaluate-{experiment}", tags=tags)
    return c, run_id


def _log_evaluation(c: Any, run_id: str, step: int, result: Any, metrics_file: Path, grids: Path) -> None:
    """Log the scores (``test/*`` at the training's last step), the metrics file and the grids."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = {f"test/{k}": getattr(result, k) for k in ("psnr", "ssim", "input_psnr", "input_ssim")}
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items() if np.isfinite(v)])
    # Tags, not params: a rerun with other settings may change them (MLflow params are write-once).
    for key in ("protocol", "y_channel", "crop_border", "dataset", "split", "task", "weights", "count"):
        c.set_tag(run_id, f"evaluate.{key}", str(getattr(result, key)))
    c.log_artifact(run_id, str(metrics_file), "evaluate")
    if grids.is_dir() and any(grids.iterdir()):
        c.log_artifacts(run_id, str(grids), "evaluate/samples")


@contextlib.contextmanager
def _remove_new_folders_on_error(folder: Path) -> Iterator[None]:
    """On an exception, delete ``folder`` and those of its parents that did not exist before, if empty."""
    new = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for path in new:  # deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (another writer) or already gone: leave it
                pass
        raise


def preflight(
    params: str | Path,
    *,
    task: str | None = None,
    profile: str,
    section: str,
    shards: str | Path,
    models: str | Path,
    metrics: str | Path,
    reports: str | Path,
    track: bool,
) -> tuple[Any, Any, Any, Path, dict[str, Any], Path]:
    """Everything :func:`run` needs, checked before any image is restored; every problem in one error.

    Checks: both params sections (all keys, named under their own section), the device, the trained
    weights, every test shard against its index (size + sha256, cached), the metrics and reports folders
    (writable), and the tracking store (reached within a few seconds) when ``track``.

    Returns:
        ``(train config, evaluate config, device, weights path, training summary or None, shard folder)``.

    Raises:
        PreflightError: every problem found, one per line.
    """
    from ast_model.artifacts import ModelDir, TrainingSummary
    from ast_model.config import ConfigError
    from ast_model.data.shards import shard_problems
    from ast_model.eval.config import EvaluateConfig
    from ast_model.preflight import output_dir_problem
    from ast_model.runtime import resolve_device
    from pipelines.errors import PreflightError
    from pipelines.params import check_profile_and_section, stage_params
    from pipelines.tracking import tracking_problem

    source = str(params)
    resolved = stage_params(params, task, profile=profile, section=section)
    train, cfg, problems = check_profile_and_section(
        resolved, profile, section, EvaluateConfig, purpose="the model to evaluate", source=source
    )
    device = None
    if cfg is not None:
        try:
            device = resolve_device(cfg.device)
        except (ValueError, RuntimeError) as exc:
            problems.append(f"{section}.device={cfg.device!r}: {exc}")
        if device is not None and cfg.precision != "fp32" and device.type != "cuda":
            problems.append(f"{section}.precision={cfg.precision} needs a CUDA device (evaluating on {device})")
    weights = summary = shard_dir = None
    if train is not None:
        model_dir = ModelDir.of(models, train.experiment)
        try:
            summary = TrainingSummary.load_optional(model_dir.summary)
            weights = model_dir.weights(cfg.weights if cfg else "best", summary)
        except (ConfigError, FileNotFoundError) as exc:
            problems.append(str(exc))
        if weights is not None and cfg is not None and cfg.weights == "best" and weights.name != "best.pt":
            print(
                f"evaluate: {model_dir.root} has no best.pt (training without validation): scoring {weights.name}",
                flush=True,
            )
        if cfg is not None:
            shard_dir = Path(shards) / train.dataset / cfg.split
            problems += shard_problems(shard_dir, progress=True)[1]
        for folder, what in (
            (Path(metrics), "metrics folder (--metrics)"),
            (Path(reports) / train.experiment, "reports folder (--reports)"),
        ):
            problem = output_dir_problem(folder, what)
            if problem:
                problems.append(problem)
    if track:
        problem = tracking_problem(offline_hint="--no-mlflow")
        if problem:
            problems.append(problem)
    if problems:
        raise PreflightError(problems, source=source, section=section)
    return train, cfg, device, weights, summary, shard_dir


def run(
    params: str | Path = "params.yaml",
    *,
    task: str | None = None,
    profile: str = "train",
    section: str = "evaluate",
    shards: str | Path = "data/shards",
    models: str | Path = "models",
    metrics: str | Path = "metrics",
    reports: str | Path = "reports",
    track: bool = True,
    progress: bool = True,
) -> Any:
    """Score the trained model of training profile ``profile`` (or task ``task``) with ``section``'s settings.

    Args:
        params: the params file.
        task: a key of the ``tasks`` section (its experiment and dataset, its ``evaluate`` keys); None: the
            profile as it stands.
        profile: the training section naming ``experiment`` and ``dataset`` (``train``, ``train_spad``, ...).
        section: the evaluation settings (:class:`~ast_model.eval.config.EvaluateConfig`).
        shards: shard root (reads ``<shards>/<dataset>/<split>``).
        models: model root (reads ``<models>/<experiment>/``).
        metrics: writes ``<metrics>/<experiment>.json``.
        reports: writes ``<reports>/<experiment>/samples/``.
        track: log to MLflow (the training's run).
        progress: show a progress bar.

    Returns:
        The :class:`~ast_model.artifacts.EvaluationMetrics` that were written.

    Raises:
        PreflightError: everything :func:`preflight` finds (bad params, no weights, a corrupt or missing
            test shard, an unwritable output folder, an unreachable tracking server), listed together
            before any image is restored.
    """
    import dataclasses

    from ast_model.artifacts import EvaluationMetrics, index_sha256
    from ast_model.checkpoint import load_checkpoint
    from ast_model.data.files import sha256_file, staged_dir
    from ast_model.data.shards import read_index
    from ast_model.eval.evaluate import evaluate_pairs

    train, cfg, device, weights, summary, shard_dir = preflight(
        params,
        task=task,
        profile=profile,
        section=section,
        shards=shards,
        models=models,
        metrics=metrics,
        reports=reports,
        track=track,
    )
    index = read_index(shard_dir)
    model = load_checkpoint(weights, map_location=device)
    print(
        f"evaluate: {weights} on {shard_dir} ({index['samples']} images, protocol {cfg.protocol}, "
        f"{'Y' if cfg.y_channel else 'RGB'}, {device})",
        flush=True,
    )

    reports_dir = Path(reports) / train.experiment
    start = time.perf_counter()
    # Grids are built in a staging folder and published whole: the folder never mixes two runs' images.
    # The folders the staging creates are removed again if scoring fails: no empty reports/<experiment>/.
    with _remove_new_folders_on_error(reports_dir), staged_dir(reports_dir / "samples") as staging:
        grids = GridWriter(staging, cfg.sample_grids)
        scores = evaluate_pairs(
            model,
            split_pairs(shard_dir, cfg.max_images),
            protocol=cfg.protocol,
            y_channel=cfg.y_channel,
            crop_border=cfg.crop_border,
            options=cfg.restore_options(),
            device=device,
            on_result=grids,
            progress=progress,
        )
    seconds = time.perf_counter() - start
    result = EvaluationMetrics(
        **{f.name: getattr(scores, f.name) for f in dataclasses.fields(scores)},
        experiment=train.experiment,
        dataset=train.dataset,
        task=index.get("task"),
        split=cfg.split,
        weights=weights.name,
        checkpoint_sha256=sha256_file(weights)[0],
        variant=getattr(model, "variant", None),
        test_index_sha256=index_sha256(shard_dir),
        ensemble=cfg.ensemble,
        training_steps=summary.steps if summary else None,
        seconds=round(seconds, 3),
        seconds_per_image=round(seconds / scores.count, 4),
    )
    metrics_file = EvaluationMetrics.path(metrics, train.experiment)
    if track:
        # The run is settled before the file is written: its id goes into the file (register logs the
        # model into the same run), and the file itself is one of the run's artifacts.
        c, run_id = _stage_run(
            summary.tracking_run_id if summary else None, train.experiment, {"evaluate.dataset": train.dataset}
        )
        result = dataclasses.replace(result, tracking_run_id=run_id)
        result.save(metrics_file)
        _log_evaluation(c, run_id, summary.steps if summary else 0, result, metrics_file, reports_dir / "samples")
    else:
        result.save(metrics_file)
    print(
        f"evaluate: PSNR {result.psnr:.3f} dB, SSIM {result.ssim:.4f} (input {result.input_psnr:.3f} dB, "
        f"{result.input_ssim:.4f}) over {result.count} images in {seconds:.1f} s -> {metrics_file}",
        flush=True,
    )
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.stages.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument(
        "--profile", default="train", help="training section naming experiment and dataset (default: %(default)s)"
    )
    p.add_argument("--section", default="evaluate", help="evaluation settings section (default: %(default)s)")
    p.add_argument("--task", help="a key of the `tasks` section (its experiment, dataset and evaluate keys)")
    p.add_argument(
        "--shards", default="data/shards", help="shard root: reads <shards>/<dataset>/<split> (default: %(default)s)"
    )
    p.add_argument("--models", default="models", help="model root: reads <models>/<experiment>/ (default: %(default)s)")
    p.add_argument("--metrics", default="metrics", help="writes <metrics>/<experiment>.json (default: %(default)s)")
    p.add_argument("--reports", default="reports", help="writes <reports>/<experiment>/samples/ (default: %(default)s)")
    p.add_argument(
        "--no-mlflow", action="store_true", help="do not log to MLflow (offline; the store is not contacted)"
    )
    p.add_argument(
        "--local-store",
        action="store_true",
        help="log to the local store (<repo>/mlflow.db) even if MLFLOW_TRACKING_URI is set",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: a problem to fix, reported before any image is restored)."""
    args = parse_args(argv)
    from pipelines.tracking import stage_prologue

    status = stage_prologue(
        "evaluate", local_store=args.local_store, probe=not args.no_mlflow, offline_hint="--no-mlflow"
    )
    if status is not None:
        return status
    from pipelines.errors import run_cli

    def body() -> int:
        run(
            args.params,
            task=args.task,
            profile=args.profile,
            section=args.section,
            shards=args.shards,
            models=args.models,
            metrics=args.metrics,
            reports=args.reports,
            track=not args.no_mlflow,
            progress=not args.quiet,
        )
        return 0

    return run_cli("evaluate", body, debug=args.debug, outcome="nothing written")


if __name__ == "__main__":
    sys.exit(main())
