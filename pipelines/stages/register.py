"""DVC stage ``register``: the evaluated model becomes a registered MLflow model version; champion gate.

Reads the ``register`` section and the training profile (``train``: which experiment), the evaluate stage's
``metrics/<experiment>.json`` and the checkpoint it scored (``models/<experiment>/best.pt`` or ``final.pt``;
its sha256 must match the one in the metrics). Then:

1. logs the model to the training's MLflow run as a pyfunc that restores images (``(H, W, 3)`` float32 in
   [0, 1] in, the same out; requirements pinned from ``requirements.txt``; the project checkpoint as an
   artifact, so ``ast-restore --model models:/<name>@champion`` works too);
2. creates a new version of the registered model ``<task>-ast`` (``register.model_name``), tagged with its
   test score and what it was measured on;
3. moves the alias ``champion`` to it only if its test PSNR beats the current champion's on the same
   dataset, split and protocol (by more than ``register.min_gain_db``); otherwise tags it ``challenger``
   with the reason.

Writes ``reports/<experiment>/registry.json`` (version, alias decision, reason) atomically.

Usage::

    python -m pipelines.stages.register [--params params.yaml] [--task NAME] [--profile train] [--section register]
        [--models models] [--metrics metrics] [--reports reports] [--requirements requirements.txt]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ast_model.config import ConfigError


def _checkpoint(model_dir: Path, metrics: Any, metrics_file: Path) -> Path:
    """The checkpoint the metrics were measured on; refuses one that changed since evaluation."""
    from ast_model.data.files import sha256_file

    path = model_dir / metrics.weights
    if not metrics.weights or not path.is_file():
        raise FileNotFoundError(f"{path}: the weights scored in {metrics_file} are missing")
    if metrics.checkpoint_sha256 and sha256_file(path)[0] != metrics.checkpoint_sha256:
        raise ConfigError(f"{path} changed since {metrics_file} was written: rerun the evaluate stage first")
    return path


def run(
    params: str | Path = "params.yaml",
    *,
    task: str | None = None,
    profile: str = "train",
    section: str = "register",
    models: str | Path = "models",
    metrics: str | Path = "metrics",
    reports: str | Path = "reports",
    requirements: str | Path = "requirements.txt",
) -> Any:
    """Register the evaluated model of training profile ``profile`` (or task ``task``); apply the champion gate.

    Args:
        params: the params file.
        task: a key of the ``tasks`` section (the experiment is the task's name); None: ``profile`` as it stands.
        profile: the training section naming ``experiment``.
        section: the registry settings (:class:`pipelines.gate.RegisterConfig`).
        models: model root (``<models>/<experiment>/``).
        metrics: metrics root (``<metrics>/<experiment>.json`` from the evaluate stage).
        reports: writes ``<reports>/<experiment>/registry.json``.
        requirements: the pinned requirements the served model gets.

    Returns:
        The :class:`~pipelines.gate.RegistryRecord` that was written.

    Raises:
        PreflightError: bad params (every key), an unwritable reports folder, an unreachable tracking store.
        ConfigError: unreadable metrics, or weights changed since evaluation.
        FileNotFoundError: no metrics or no weights.
        RegistryError: MLflow refused a step (logging, registering).
    """
    from ast_model.artifacts import EvaluationMetrics, ModelDir
    from ast_model.preflight import output_dir_problem
    from pipelines import gate
    from pipelines import model_registry as registry
    from pipelines.errors import PreflightError
    from pipelines.onnx_artifact import attach_onnx
    from pipelines.params import check_profile_and_section, stage_params
    from pipelines.tracking import client, run_for_stage, tracking_problem

    source = str(params)
    # Pre-flight: every problem below is collected and reported together before MLflow is touched.
    resolved = stage_params(params, task, profile=profile)
    train, cfg, problems = check_profile_and_section(
        resolved, profile, section, gate.RegisterConfig, purpose="the model to register", source=source
    )
    if train is not None:
        problem = output_dir_problem(Path(reports) / train.experiment, "reports folder (--reports)")
        problems += [problem] if problem else []
    problem = tracking_problem()  # registering needs the store: no offline option here
    problems += [problem] if problem else []
    if problems:
        raise PreflightError(problems, source=source, section=section)

    metrics_file = EvaluationMetrics.path(metrics, train.experiment)
    scores = EvaluationMetrics.load(metrics_file)
    score = gate.Score.from_metrics(scores)
    if not scores.task:
        raise ConfigError(f"{metrics_file}: no task (the test shards' index names none): cannot name the model")
    name = gate.registered_model_name(cfg.model_name, scores.task)
    checkpoint = _checkpoint(ModelDir.of(models, train.experiment).root, scores, metrics_file)
    pins = registry.pinned_requirements(requirements)

    c = client()
    run_id, _ = run_for_stage(
        c, scores.tracking_run_id, experiment=train.experiment, run_name=f"register-{train.experiment}"
    )
    info = {
        "experiment": train.experiment,
        "task": scores.task,
        "variant": str(scores.variant),
        "weights": checkpoint.name,
        "checkpoint_sha256": scores.checkpoint_sha256,
    }
    logged = registry.log_restorer(
        c,
        run_id=run_id,
        checkpoint=checkpoint,
        pip_requirements=pins,
        metadata={**info, **asdict(score)},
        tags=score.to_tags(),
    )
    extra = {"test.count": str(scores.count), "test.input_psnr": repr(float(scores.input_psnr))}
    version = registry.register_version(
        c,
        name,
        logged,
        tags={**info, **score.to_tags(), **extra},
        description=f"{info['variant']} from experiment {train.experiment} ({checkpoint.name}): {score.describe()}",
    )
    attach_onnx(c, name, str(version.version), logged.model_id, checkpoint)  # onnx/model.onnx + onnx.* tags
    previous = registry.current_champion(c, name, cfg.alias)
    previous_version = str(previous[0].version) if previous else None
    decision = gate.decide(
        score,
        previous[1] if previous else None,
        champion_version=previous_version,
        min_gain_db=cfg.min_gain_db,
        same_test_data=cfg.same_test_data,
    )
    new_version = str(version.version)
    registry.apply_decision(c, name, new_version, decision, cfg.alias)

    result = gate.RegistryRecord(
        registered_model=name,
        version=new_version,
        model_uri=f"models:/{name}/{new_version}",
        alias=cfg.alias,
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=new_version if decision.promote else previous_version,
        previous_champion=(
            {"version": previous_version, "psnr": previous[1].psnr if previous[1] else None} if previous else None
        ),
        test=asdict(score),
        logged_model_id=logged.model_id,
        tracking_run_id=run_id,
    )
    out = gate.RegistryRecord.path(reports, train.experiment)
    result.save(out)
    verdict = f"now @{cfg.alias}" if decision.promote else "tagged challenger"
    print(f"register: {name} v{new_version} {verdict}: {decision.reason} -> {out}", flush=True)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.stages.register", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--profile", default="train", help="training section naming the experiment (default: %(default)s)")
    p.add_argument("--section", default="register", help="registry settings section (default: %(default)s)")
    p.add_argument("--task", help="a key of the `tasks` section (the experiment is the task's name)")
    p.add_argument("--models", default="models", help="model root: reads <models>/<experiment>/ (default: %(default)s)")
    p.add_argument("--metrics", default="metrics", help="reads <metrics>/<experiment>.json (default: %(default)s)")
    p.add_argument(
        "--reports", default="reports", help="writes <reports>/<experiment>/registry.json (default: %(default)s)"
    )
    p.add_argument(
        "--requirements",
        default="requirements.txt",
        help="pinned requirements of the served model (default: %(default)s)",
    )
    p.add_argument(
        "--local-store",
        action="store_true",
        help="register in the local store (<repo>/mlflow.db) even if MLFLOW_TRACKING_URI is set",
    )
    p.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: a problem to fix, nothing registered; 1: MLflow refused)."""
    from pipelines.tracking import stage_prologue

    args = parse_args(argv)
    # First, before MLflow is imported (seconds on a loaded machine); registering needs the store.
    status = stage_prologue("register", local_store=args.local_store, probe=True)
    if status is not None:
        return status
    from pipelines.errors import run_cli
    from pipelines.model_registry import RegistryError

    def body() -> int:
        try:
            run(
                args.params,
                task=args.task,
                profile=args.profile,
                section=args.section,
                models=args.models,
                metrics=args.metrics,
                reports=args.reports,
                requirements=args.requirements,
            )
        except RegistryError as exc:
            print(f"register: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_cli("register", body, debug=args.debug, outcome="nothing registered")


if __name__ == "__main__":
    sys.exit(main())
