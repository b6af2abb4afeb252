"""``make run``: the whole pipeline on the embedded default (``dvc repro``), then a short report.

``dvc repro`` runs every stage of ``dvc.yaml`` whose inputs changed (data -> shards -> training ->
evaluation -> registry); a second call with nothing changed runs nothing. DVC starts each stage's
``python`` from ``PATH``, so this puts the interpreter running it (the project's virtualenv) first.
Then it restores one test image of the training dataset with the trained model and prints shapes, time
and paths, so that a first-time user sees the model work end to end.

    python -m pipelines.run [--params params.yaml] [--no-repro]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ast_model.config import read_params


def pipeline_env(root: Path) -> dict[str, str]:
    """Environment for DVC and the stages: this interpreter first on PATH, no analytics, local caches."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DVC_SITE_CACHE_DIR", str(root / ".cache" / "dvc-site"))  # else /var/tmp/dvc
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def repro(root: Path) -> int:
    """Run ``dvc repro`` in ``root``; returns DVC's exit status (the failing stage has said why above)."""
    dvc = Path(sys.executable).parent / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", "repro"]
    print("$", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=root, env=pipeline_env(root))
    if status:
        print(f"make run: dvc repro failed with status {status} (the stage's message is above)", file=sys.stderr)
    return status


def demo_restore(root: Path, params: dict) -> None:
    """Restore the first test image of the training dataset with the trained model; print the result."""
    import torch

    import ast_model
    from ast_model.data.loaders import make_eval_loader
    from ast_model.eval.images import save_png
    from ast_model.eval.metrics import psnr
    from ast_model.eval.restore import restore_image

    train = params.get("train") or {}
    experiment, dataset = train.get("experiment", "default"), train.get("dataset", "embedded_rain")
    weights = root / "models" / experiment / "final.pt"
    shards = root / "data" / "shards" / dataset / "test"
    if not weights.exists() or not (shards / "index.json").exists():
        print(f"(no demo: {weights} or {shards}/index.json is missing)")
        return
    model = ast_model.load_checkpoint(weights)
    sample = next(iter(make_eval_loader(shards)))
    degraded = sample["input"][0].permute(1, 2, 0).numpy()  # (H, W, 3)
    target = sample["target"][0].permute(1, 2, 0).numpy()
    t0 = time.perf_counter()
    restored = restore_image(model, degraded)
    seconds = time.perf_counter() - t0
    out = save_png(root / "outputs" / "demo" / f"{sample['key']}.restored.png", restored)
    params_m = sum(p.numel() for p in model.parameters())
    print(f"model     {weights} ({getattr(model, 'variant', '?')}, {params_m:,} params, threads {torch.get_num_threads()})")
    print(f"input     {sample['key']} {degraded.shape} -> restored {restored.shape} in {seconds:.2f} s")
    print(f"PSNR      input {psnr(degraded, target):.2f} dB -> restored {psnr(restored, target):.2f} dB")
    print(f"written   {out}")
    metrics = root / "metrics" / f"{experiment}.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        print(f"test set  {metrics}: PSNR {m.get('psnr')} / SSIM {m.get('ssim')} "
              f"(degraded input: {m.get('input_psnr')} / {m.get('input_ssim')}), protocol {m.get('protocol')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make run``.

    Before ``dvc repro`` starts anything, the tracking store is probed (a dead ``MLFLOW_TRACKING_URI``
    stops here in one line, not after the data stages); each stage then does its own pre-flight and
    reports in the same style. Exit status 2: a problem to fix; DVC's status otherwise.
    """
    from pipelines.errors import PreflightError, run_cli
    from pipelines.tracking import tracking_problem, use_local_store

    ap = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-repro", action="store_true", help="only the report (after an earlier repro)")
    ap.add_argument("--local-store", action="store_true",
                    help="log to the local store (<repo>/mlflow.db) even if MLFLOW_TRACKING_URI is set")
    ap.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    args = ap.parse_args(argv)
    root = Path.cwd()
    if args.local_store:
        use_local_store(root)  # the stages DVC starts inherit it

    def body() -> int:
        if not args.no_repro:
            problem = tracking_problem()
            if problem:
                raise PreflightError(problem)
            status = repro(root)
            if status:
                return status
        demo_restore(root, read_params(root / args.params))
        return 0

    return run_cli("make run", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
