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


def repro(root: Path) -> None:
    """Run ``dvc repro`` in ``root`` (raises ``SystemExit`` with DVC's status on failure)."""
    dvc = Path(sys.executable).parent / "dvc"
    cmd = [str(dvc) if dvc.exists() else "dvc", "repro"]
    print("$", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=root, env=pipeline_env(root))
    if status:
        raise SystemExit(f"dvc repro failed with status {status}")


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
    """Entry point of ``make run``."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-repro", action="store_true", help="only the report (after an earlier repro)")
    args = ap.parse_args(argv)
    root = Path.cwd()
    if not args.no_repro:
        repro(root)
    demo_restore(root, read_params(root / args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
