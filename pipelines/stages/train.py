"""DVC stage ``train``: validate the training profile, then start the workers (DeepSpeed).

Everything that can be checked is checked here, before any worker starts: unknown or mistyped keys, batch
sizes that do not divide over the ranks, more readers than training shards, patches larger than the
images, fp16 without a GPU. All problems are reported together and the stage exits with status 2.

Then it writes the resolved run (``checkpoints/<experiment>/launch/spec-node<R>.json``) and starts the
workers through ``torchrun`` or ``deepspeed`` (one process: in this process, no launcher). On several
nodes run this same command on every node, each with its node rank (``--node-rank`` or NODE_RANK).

Usage::

    python -m pipelines.stages.train [--params params.yaml] [--profile train] [--shards data/shards]
        [--task NAME] [--out models] [--checkpoints checkpoints] [--nproc-per-node M] [--nnodes N] [--node-rank R]
        [--master-addr HOST] [--master-port P] [--launcher auto|torchrun|deepspeed|none]
        [--fresh | --resume-only] [--check] [--no-mlflow | --local-store] [--debug]

Exit status 2 with one line per problem (``--debug``: tracebacks) for anything the user fixes; all of it
is found before a worker starts, including a corrupt training or validation shard and a tracking server
that does not answer within a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGE_MODULE = "pipelines.stages.train"


def _model(
    params: dict[str, Any], profile: str, name: str | None, overrides: dict[str, Any], source: str
) -> tuple[str, dict, int]:
    """(variant, create_model kwargs, pad multiple) from the ``model`` section and the profile's overrides."""
    from ast_model import model_config
    from ast_model.config import ConfigError, load_section
    from ast_model.train.config import ModelConfig

    section = load_section(ModelConfig, params, "model", source=source)
    variant = name or section.name
    kwargs = {"bottleneck_shift": section.bottleneck_shift, **overrides}
    try:
        cfg = model_config(variant, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model / {profile}.model_overrides: {exc}") from exc
    return variant, kwargs, 16 * cfg.win_size  # AST.pad_multiple, without building the network


def _index(split_dir: Path) -> dict[str, Any] | None:
    from ast_model.data.shards import ShardError, read_index

    try:
        return read_index(split_dir)
    except ShardError:
        return None


def plan(args: argparse.Namespace, params: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Read, check and resolve everything; no process is started, no server contacted beyond a probe.

    ``params``: the parsed params to use instead of reading ``args.params`` (the ablation stage passes
    its generated profiles; ``args.params`` then only names the file in messages).

    Pre-flight, all collected into one report: every key of the profile (unknown, mistyped, out of range:
    named under the profile's own section, e.g. ``train_p1.phases[0].lr``), the shard indexes, every shard
    of the training and validation splits against its index (size + sha256; hashed once and cached, see
    :func:`ast_model.data.shards.shard_problems`), the output folders, and the tracking store (a server is
    asked once with a short timeout).

    Returns:
        ``(RunSpec, effective LaunchConfig)``.

    Raises:
        PreflightError: every problem found, one per line.
    """
    import torch

    from ast_model.config import ConfigError
    from ast_model.data.shards import shard_problems
    from ast_model.preflight import output_dir_problem
    from ast_model.train.config import check_config, resolve_phases
    from ast_model.train.spec import RunSpec
    from pipelines.errors import PreflightError
    from pipelines.launch import launch_problems, resolve_launch, world_size
    from pipelines.params import load_profile, stage_params
    from pipelines.tracking import data_version_tags, git_tags, tracking_problem

    source, profile = str(args.params), args.profile
    if params is None:
        params = stage_params(args.params, getattr(args, "task", None), profile=profile)
    if profile not in params:
        profiles = sorted(k for k in params if k.startswith("train"))
        raise PreflightError(f"no section {profile!r} (training profiles: {profiles})", source=source)
    cfg, launch, problems = load_profile(params, profile, source=source)
    if cfg is None or launch is None:  # a required key is missing or unusable: nothing else can be checked
        raise PreflightError(problems, source=source, section=profile)
    overrides = {
        k: getattr(args, k) for k in ("nnodes", "node_rank", "nproc_per_node", "master_addr", "master_port", "launcher")
    }
    try:
        launch = resolve_launch(launch, overrides=overrides)
    except (ConfigError, ValueError) as exc:
        problems += str(exc).splitlines()
    problems += launch_problems(launch, has_gpu=torch.cuda.is_available(), section=f"{profile}.launch")
    ws = world_size(launch)
    pad = None
    variant, model_kwargs = None, {}
    try:
        variant, model_kwargs, pad = _model(params, profile, cfg.model, cfg.model_overrides, source)
    except ConfigError as exc:
        problems += exc.problems

    train_dir = (Path(args.shards) / cfg.dataset / "train").resolve()
    split = cfg.validation.split
    val_dir = (Path(args.shards) / cfg.dataset / split).resolve() if split else None
    index = _index(train_dir)
    if index is None:
        problems.append(f"{train_dir}: no complete shard index (run `dvc repro shard`, or check {profile}.dataset)")
    else:  # every shard the workers will read, before any worker starts: training and validation
        problems += shard_problems(train_dir, progress=True)[1]
    if val_dir is not None:
        if _index(val_dir) is None:
            problems.append(
                f"{val_dir}: no shard index for {profile}.validation.split={split!r} (null disables validation)"
            )
        else:
            problems += shard_problems(val_dir, progress=True)[1]
    samples = int(index["samples"]) if index else None
    problems += check_config(
        cfg,
        world_size=ws,
        train_samples=samples,
        num_shards=len(index["shards"]) if index else None,
        has_gpu=torch.cuda.is_available(),
        shard_dir=str(train_dir),
        pad_multiple=pad,
        section=profile,
    )
    if index and index.get("min_height"):
        smallest = min(index["min_height"], index["min_width"])
        problems += [
            f"{profile}.phases[{i}].patch_size={s.patch_size} is larger than the smallest training image "
            f"({smallest} px)"
            for i, s in enumerate(cfg.phases)
            if s.patch_size > smallest
        ]
    out_dir = (Path(args.out) / cfg.experiment).resolve()
    ckpt_dir = (Path(args.checkpoints) / cfg.experiment).resolve()
    for folder, what in ((out_dir, "model folder (--out)"), (ckpt_dir, "checkpoint folder (--checkpoints)")):
        problem = output_dir_problem(folder, what)
        if problem:
            problems.append(problem)
    if getattr(args, "tracking", True) and not getattr(args, "tracking_checked", False):
        problem = tracking_problem(offline_hint="--no-mlflow")
        if problem:
            problems.append(problem)
    if problems:
        raise PreflightError(problems, source=source, section=profile)
    stages = resolve_phases(cfg, world_size=ws, train_samples=samples)
    tags = {**data_version_tags(train_dir), **git_tags(), "train.profile": profile, "train.dataset": cfg.dataset}
    spec = RunSpec(
        train=cfg,
        profile=profile,
        model_name=variant,
        model_kwargs=model_kwargs,
        phases=stages,
        world_size=ws,
        train_dir=str(train_dir),
        val_dir=str(val_dir) if val_dir else None,
        out_dir=str(out_dir),
        ckpt_dir=str(ckpt_dir),
        tags=tags,
        backend=launch.backend,
        timeout_s=launch.timeout_s,
    )
    return spec, launch


def _describe(spec: Any, launcher: str) -> str:
    cfg = spec.train
    lines = [
        f"train: {spec.profile} -> {spec.out_dir}  ({spec.model_name}, {cfg.precision}, ZeRO {cfg.zero_stage}, "
        f"{spec.world_size} process(es) via {launcher}, {spec.total_steps} steps)"
    ]
    for s in spec.phases:
        lines.append(
            f"  phase {s.index}: {s.steps} steps, patch {s.patch_size}, batch {s.global_batch} "
            f"(micro {s.micro_batch} x accum {cfg.grad_accum} x {spec.world_size}), lr {s.lr:g}, "
            f"warm-up {s.warmup_steps}"
        )
    return "\n".join(lines)


def _tracker_factory(spec: Any):
    """Rank 0's MLflow run: params flattened, data version and git commit as tags."""
    from pipelines.tracking import MlflowTracker

    def make(resume_run_id: str | None, stale_run_id: str | None) -> Any:
        params = {
            "train": spec.train.to_dict(),
            "model": {"name": spec.model_name, **spec.model_kwargs},
            "resolved": {
                "world_size": spec.world_size,
                "total_steps": spec.total_steps,
                "phases": [dataclasses.asdict(s) for s in spec.phases],
            },
        }
        tracker = MlflowTracker.start(
            experiment=spec.train.experiment,
            run_name=f"train-{spec.profile}",
            params=params,
            tags={**spec.tags, "train.fingerprint": spec.fingerprint()},
            resume_run_id=resume_run_id,
            stale_run_id=stale_run_id,
        )
        if resume_run_id is None:  # lineage: the exact data, as MLflow dataset inputs (once per run)
            dvc = {k: v for k, v in spec.tags.items() if k.startswith("data.dvc.")}
            tracker.log_dataset(spec.train.dataset, spec.train_dir, context="training", tags=dvc)
            if spec.val_dir:
                tracker.log_dataset(spec.train.dataset, spec.val_dir, context="validation", tags=dvc)
        return tracker

    return make


def run_worker(spec_path: str | Path, resume: str = "auto", *, tracking: bool = True, debug: bool = False) -> int:
    """One training process (under a launcher, or alone). Returns the exit status.

    2: a problem the user fixes (a shard that changed since the pre-flight, a tracking store that went
    away, a resume that is not possible), printed in one line; 3: a non-finite loss. Other errors are
    bugs and keep their traceback.
    """
    from ast_model.train.distributed import ensure_launcher_env
    from ast_model.train.loop import NonFiniteLossError
    from ast_model.train.run import ResumeError, configure_logging, stop_on_sigterm, stop_with_parent, train
    from ast_model.train.spec import RunSpec
    from pipelines.errors import USER_ERRORS, format_error
    from pipelines.tracking import TrackingError, is_tracking_failure, tracking_uri

    spec = RunSpec.load(spec_path)
    # The process-wide settings a worker needs, made here (the entry point), not by the library: launcher
    # variables for a lone process, rank-prefixed logging, SIGTERM as KeyboardInterrupt (the tracker run
    # ends KILLED; the next launch resumes), and cuBLAS's workspace setting for deterministic runs. A worker
    # a launcher started also stops when the launcher dies, even by SIGKILL (no orphan training on).
    launched = "RANK" in os.environ  # before ensure_launcher_env fills it in for a lone process
    ensure_launcher_env()
    configure_logging(int(os.environ["RANK"]))
    stop_on_sigterm()
    if launched:
        stop_with_parent()
    if spec.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        train(spec, tracker_factory=_tracker_factory(spec) if tracking else None, resume=resume)
    except NonFiniteLossError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 3
    except (*USER_ERRORS, ResumeError, TrackingError) as exc:
        if debug:
            raise
        print(format_error("train", exc, outcome="stopped"), file=sys.stderr, flush=True)
        return 2
    except Exception as exc:
        if debug or not is_tracking_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"train: the tracking store {tracking_uri()} failed during the run ({first[:300]}); the last "
            "checkpoint is kept: rerun to resume, or pass --no-mlflow / --local-store",
            file=sys.stderr,
            flush=True,
        )
        return 2
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.stages.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--profile", default="train", help="params section to train (train, train_spad, ...)")
    p.add_argument(
        "--task",
        help="a key of the `tasks` section: the profile with that task's keys merged in (experiment = the task name)",
    )
    p.add_argument("--shards", default="data/shards", help="shard root: reads <shards>/<dataset>/<split>")
    p.add_argument("--out", default="models", help="output root: writes <out>/<experiment>/")
    p.add_argument("--checkpoints", default="checkpoints", help="DeepSpeed checkpoint root (resume)")
    p.add_argument("--nproc-per-node", type=int, help="processes on this node (env NPROC_PER_NODE)")
    p.add_argument("--nnodes", type=int, help="number of nodes (env NNODES)")
    p.add_argument("--node-rank", type=int, help="this node's rank (env NODE_RANK)")
    p.add_argument("--master-addr", help="rendezvous host, node 0 (env MASTER_ADDR)")
    p.add_argument("--master-port", type=int, help="rendezvous port (env MASTER_PORT)")
    p.add_argument("--launcher", choices=["auto", "torchrun", "deepspeed", "none"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--fresh", action="store_true", help="ignore and delete existing checkpoints")
    group.add_argument("--resume-only", action="store_true", help="fail unless a checkpoint can be resumed")
    p.add_argument("--check", action="store_true", help="validate and print the plan, start nothing")
    p.add_argument(
        "--no-mlflow",
        dest="tracking",
        action="store_false",
        help="no MLflow run (offline); the tracking store is not contacted",
    )
    p.add_argument(
        "--local-store",
        action="store_true",
        help="log to the local store (<repo>/mlflow.db) even if MLFLOW_TRACKING_URI is set",
    )
    p.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)  # set by the launcher
    p.add_argument("--resume", default="auto", choices=["auto", "never", "must"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: a problem to fix, nothing started; 3: non-finite loss)."""
    args = parse_args(argv)
    from pipelines.tracking import stage_prologue

    # The workers inherit --local-store through the environment; they do not probe again.
    status = stage_prologue(
        "train", local_store=args.local_store, probe=args.tracking and not args.worker, offline_hint="--no-mlflow"
    )
    if status is not None:
        return status
    if args.worker:
        return run_worker(args.worker, args.resume, tracking=args.tracking, debug=args.debug)
    args.tracking_checked = args.tracking
    from pipelines.errors import run_cli

    return run_cli("train", lambda: _launch(args), debug=args.debug)


def _launch(args: argparse.Namespace) -> int:
    from pipelines.launch import build_command, launcher_of, run, worker_env

    spec, launch = plan(args)
    launcher = launcher_of(launch)
    print(_describe(spec, launcher), flush=True)
    if args.check:
        return 0
    resume = "never" if args.fresh else "must" if args.resume_only else "auto"
    spec_path = Path(spec.ckpt_dir) / "launch" / f"spec-node{launch.node_rank}.json"
    spec.save(spec_path)
    if launcher == "none":
        return run_worker(spec_path, resume, tracking=args.tracking, debug=args.debug)
    extra = [] if args.tracking else ["--no-mlflow"]
    extra += ["--debug"] if args.debug else []
    cmd = build_command(launch, [STAGE_MODULE, "--worker", str(spec_path), "--resume", resume, *extra])
    status = run(cmd, worker_env(launch))
    if status != 0:
        print(f"train: workers failed (exit status {status}); see the rank logs above", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
