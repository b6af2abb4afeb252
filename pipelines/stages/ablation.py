"""DVC stage ``ablation@<variant>``: train one ablation variant once per seed, score it, write its record.

For the variant ``tables.variants.<variant>`` (overrides of the one network) and each seed of
``tables.seeds``, a training profile is generated from the active budget (``tables.budgets.<budget>``: its
``train`` keys merged over its ``base`` profile, the variant's overrides merged into ``model_overrides``) and
trained by the train stage's own planning and worker (:func:`pipelines.stages.train.plan`,
:func:`~pipelines.stages.train.run_worker`), in this process with world size 1: the seeds of a variant share
one interpreter, so DeepSpeed and torch are imported once per variant, not once per run. Each trained model
is scored on the test split of ``tables.dataset`` (PSNR/SSIM, float RGB, whole images, as the ``evaluate``
stage's default), and, where the network allows, the Eq. 9 attention entropy on the same test inputs
(window attentions) and the learned branch weights (ASSA). Params and MACs are those of the paper's AST-T
with this variant (built on the meta device, 1x3x256x256), whatever the budget trains.

Writes ``<out>/<variant>.json`` atomically (the table stages read it). The models and DeepSpeed
checkpoints go to ``<work>/<variant>/`` and are deleted after scoring (the record keeps the numbers).
Each run is an MLflow run in the experiment ``ablation`` (run name ``train-<variant>-seed<S>``, tags
``tables.*``) with its test scores logged; the table stages nest their summaries under one parent per table.

Usage::

    python -m pipelines.stages.ablation --variant NAME [--params params.yaml] [--shards data/shards]
        [--out reports/ablation] [--work checkpoints/ablation] [--no-mlflow | --local-store] [--debug]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXPERIMENT = "ablation"


def training_params(params: dict[str, Any], cfg: Any, variant: str, seed: int) -> tuple[str, dict[str, Any]]:
    """``(profile name, params with that profile added)``: the variant's training profile for one seed.

    The profile is the active budget's ``train`` keys merged over its ``base`` profile (mappings key by key,
    lists replaced), with the variant's overrides merged into ``model_overrides`` and ``experiment``,
    ``dataset`` and ``seed`` set. Any ``launch`` key of the base is dropped: the runs are in-process.
    """
    from pipelines.params import _merge
    from pipelines.tables import SECTION

    budget = cfg.active
    if budget.base not in params:
        from pipelines.errors import PreflightError

        raise PreflightError(
            f"{SECTION}.budgets.{cfg.budget}.base={budget.base!r}: no such training profile in the params file"
        )
    profile = _merge(params[budget.base], budget.train)
    profile.pop("launch", None)
    profile["model_overrides"] = {**(profile.get("model_overrides") or {}), **cfg.variants[variant]}
    profile.update(experiment=EXPERIMENT, dataset=cfg.dataset, seed=seed)
    name = f"{variant}-seed{seed}"
    return name, {**params, name: profile}


def paper_scale_counts(params: dict[str, Any], overrides: dict[str, Any]) -> tuple[int, int]:
    """``(Params, MACs at 1x3x256x256)`` of the ``model`` section's network (AST-T) with ``overrides``.

    Built on the meta device: exact counts, no memory, a second or two.
    """
    import torch

    from ast_model import create_model
    from ast_model.flops import count_macs, count_params

    model = params.get("model") or {}
    with torch.device("meta"):
        net = create_model(
            model.get("name", "ast_t"), bottleneck_shift=model.get("bottleneck_shift", False), **overrides
        )
    return count_params(net), count_macs(net, (1, 3, 256, 256))


def _score(model: Any, test_dir: Path) -> dict[str, Any]:
    """Test-split scores, the attention entropy (window attentions) and branch weights (ASSA)."""
    import numpy as np
    import torch

    from ast_model.eval.analysis import attention_entropy, branch_weights
    from ast_model.eval.evaluate import evaluate_pairs
    from pipelines.stages.evaluate import split_pairs

    inputs: list[torch.Tensor] = []

    def keep_input(_key: str, degraded: np.ndarray, _restored: np.ndarray, _target: np.ndarray) -> None:
        inputs.append(torch.from_numpy(np.ascontiguousarray(degraded)).permute(2, 0, 1)[None])  # (1, 3, H, W)

    start = time.perf_counter()
    scores = evaluate_pairs(model, split_pairs(test_dir, None), on_result=keep_input)
    out: dict[str, Any] = {
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        "input_psnr": scores.input_psnr,
        "input_ssim": scores.input_ssim,
        "test_images": scores.count,
        "eval_seconds": round(time.perf_counter() - start, 3),
    }
    try:
        ent = attention_entropy(model, inputs)
        out["entropy"] = {"value": ent.value, "empty_fraction": ent.empty_fraction, "per_layer": ent.per_layer}
    except ValueError:  # not a window attention (channel / condensed / top-k): no Eq. 9 entropy
        out["entropy"] = None
    try:
        out["branch_weights"] = [dataclasses.asdict(w) for w in branch_weights(model)]
    except ValueError:  # not ASSA
        out["branch_weights"] = None
    return out


def run(
    params_path: str | Path,
    variant: str,
    *,
    shards: str | Path = "data/shards",
    out: str | Path = "reports/ablation",
    work: str | Path = "checkpoints/ablation",
    track: bool = True,
    debug: bool = False,
) -> dict[str, Any]:
    """Train and score ``variant`` for every seed; write and return its record (see the module docstring).

    Raises:
        PreflightError: a bad ``tables`` section, an unknown variant, a test shard that does not match its
            index, or what the train stage's plan finds (profile keys, train/val shards, folders, tracking
            store), for the first seed, before any training.
        RuntimeError: a training run failed (its message is printed above).
    """
    from ast_model.checkpoint import load_checkpoint
    from ast_model.config import read_params
    from ast_model.data.files import atomic_write_json
    from ast_model.data.shards import shard_problems
    from pipelines.errors import PreflightError
    from pipelines.stages import train as train_stage
    from pipelines.tables import SECTION, hardware, load_tables_config

    source = str(params_path)
    params = read_params(params_path)
    cfg = load_tables_config(params, source=source)
    if variant not in cfg.variants:
        raise PreflightError(
            f"{SECTION}.variants has no {variant!r} (variants: {', '.join(cfg.variants)})", source=source
        )
    overrides = cfg.variants[variant]
    n_params, macs = paper_scale_counts(params, overrides)
    test_dir = Path(shards) / cfg.dataset / "test"
    # The test split is scored after each training: verified now, or a bad shard costs the training first.
    # (The train and val splits are verified by the train stage's plan below.)
    problems = shard_problems(test_dir, progress=True)[1]
    if problems:
        raise PreflightError(problems)  # each names its shard: not a params.yaml problem
    runs = []
    for seed in cfg.seeds:
        profile, resolved = training_params(params, cfg, variant, seed)
        folder = Path(work) / variant / f"seed{seed}"
        ns = argparse.Namespace(
            params=source,
            profile=profile,
            task=None,
            shards=str(shards),
            out=str(folder / "models"),
            checkpoints=str(folder / "checkpoints"),
            nnodes=1,
            node_rank=0,
            nproc_per_node=1,
            master_addr=None,
            master_port=None,
            launcher="none",
            tracking=track,
            tracking_checked=False,
        )
        spec, _ = train_stage.plan(ns, resolved)
        tags = {"tables.variant": variant, "tables.seed": str(seed), "tables.budget": cfg.budget}
        spec = dataclasses.replace(spec, tags={**spec.tags, **tags})
        spec_path = Path(spec.ckpt_dir) / "launch" / "spec-node0.json"
        spec.save(spec_path)
        print(f"ablation: {variant} seed {seed}: {spec.total_steps} steps ({cfg.budget} budget)", flush=True)
        start = time.perf_counter()
        status = train_stage.run_worker(spec_path, "never", tracking=track, debug=debug)
        if status:
            raise RuntimeError(f"ablation: training {variant} seed {seed} failed (exit status {status})")
        train_seconds = time.perf_counter() - start
        out_dir = Path(spec.out_dir)
        summary = _load_summary(out_dir)
        model = load_checkpoint(out_dir / "final.pt")
        scored = _score(model, test_dir)
        run_id = summary.get("tracking_run_id")
        if track and run_id:
            _log_test_scores(run_id, scored, summary.get("steps", spec.total_steps))
        runs.append(
            {
                "seed": seed,
                "steps": summary.get("steps", spec.total_steps),
                "train_seconds": round(train_seconds, 3),
                "trained_params": sum(p.numel() for p in model.parameters()),
                "tracking_run_id": run_id,
                **scored,
            }
        )
        print(
            f"ablation: {variant} seed {seed}: test PSNR {scored['psnr']:.3f} dB (input {scored['input_psnr']:.3f}), "
            f"trained in {train_seconds:.1f} s, scored in {scored['eval_seconds']:.1f} s",
            flush=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
    record = {
        "variant": variant,
        "overrides": overrides,
        "params": n_params,
        "macs": macs,
        "budget": cfg.budget,
        "budget_description": cfg.active.description,
        "budget_train": cfg.active.train,
        "dataset": cfg.dataset,
        "hardware": hardware(),
        "runs": runs,
    }
    path = Path(out) / f"{variant}.json"
    atomic_write_json(path, record)
    print(f"ablation: {variant}: {len(runs)} run(s) -> {path}", flush=True)
    return record


def _load_summary(out_dir: Path) -> dict[str, Any]:
    import json

    from ast_model.artifacts import ModelDir

    path = ModelDir(out_dir).summary
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _log_test_scores(run_id: str, scored: dict[str, Any], step: int) -> None:
    """``test/psnr`` ... on the training run, so the MLflow UI compares the runs on their test scores."""
    import math

    from pipelines.tracking import client

    c = client()
    for key in ("psnr", "ssim", "input_psnr", "input_ssim"):
        if math.isfinite(scored[key]):
            c.log_metric(run_id, f"test/{key}", float(scored[key]), step=step)
    if scored.get("entropy"):
        c.log_metric(run_id, "test/attention_entropy", float(scored["entropy"]["value"]), step=step)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.stages.ablation", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, help="a key of tables.variants")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--shards", default="data/shards", help="shard root (default: %(default)s)")
    p.add_argument("--out", default="reports/ablation", help="writes <out>/<variant>.json (default: %(default)s)")
    p.add_argument("--work", default="checkpoints/ablation", help="scratch folder of the runs (default: %(default)s)")
    p.add_argument("--no-mlflow", action="store_true", help="no MLflow runs (the store is not contacted)")
    p.add_argument("--local-store", action="store_true", help="log to the local store (<repo>/mlflow.db)")
    p.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: a problem to fix, reported before any training)."""
    args = parse_args(argv)
    from pipelines.tracking import stage_prologue

    status = stage_prologue(
        "ablation", local_store=args.local_store, probe=not args.no_mlflow, offline_hint="--no-mlflow"
    )
    if status is not None:
        return status
    from pipelines.errors import run_cli

    def body() -> int:
        run(
            args.params,
            args.variant,
            shards=args.shards,
            out=args.out,
            work=args.work,
            track=not args.no_mlflow,
            debug=args.debug,
        )
        return 0

    return run_cli("ablation", body, debug=args.debug, outcome="nothing written")


if __name__ == "__main__":
    sys.exit(main())
