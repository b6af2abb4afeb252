"""A short training run through the real stage learns: its validation PSNR beats the degraded input.

prepare (embedded haze) -> shard -> ``python -m pipelines.stages.train`` (DeepSpeed, one process) with the
default profile's learning settings (identity start, MSE, AST-T with 4x4 windows, 64-px crops), then the
learning curve the trainer writes (``history.csv``) is read back. Haze is the task that learns within a
test's budget on 2 cores (a global, smooth degradation); rain streaks and raindrops need far more steps
(docs/training.md has the curves), so they would not tell a learning run from a broken one here.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.stages import prepare, shard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _params(ws: Path) -> Path:
    default = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    params = {
        "model": {"name": "ast_t", "bottleneck_shift": False},
        "data": {
            "datasets": {"haze": {"source": "embedded", "task": "haze"}},
            "max_nodes": 1,
            "max_procs_per_node": 1,
            "max_workers": 1,
        },
        "prepare": {
            "embedded": {
                "short_side": 96,
                "crop_scale": [0.3, 1.0],
                "photos": {"train": ["astronaut", "chelsea", "rocket"], "val": ["coffee"]},
                "variants": {"train": 8, "val": 2},
            }
        },
        "shard": {"samples_per_shard": 8},
        "train": {
            "experiment": "learns",
            "dataset": "haze",
            # The learning settings of the default profile, as a user gets them.
            **{k: default[k] for k in ("model_overrides", "start_as_identity", "loss", "schedule")},
            "phases": [{**default["phases"][0], "steps": 60}],
            "deterministic": True,
            "save_every": 60,
            "log_every": 10,
            "validation": {"every_steps": 30, "split": "val", "sample_images": 0},
        },
    }
    path = ws / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_a_short_run_beats_its_input_on_validation(tmp_path: Path, torch_extensions_dir: Path) -> None:
    params = _params(tmp_path)
    prepare.run(params, tmp_path / "prepared")
    shard.run(params, tmp_path / "prepared", tmp_path / "shards")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.stages.train",
        "--params",
        str(params),
        "--profile",
        "train",
        "--shards",
        str(tmp_path / "shards"),
        "--out",
        str(tmp_path / "models"),
        "--checkpoints",
        str(tmp_path / "ckpt"),
        "--launcher",
        "none",
        "--no-mlflow",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    with (tmp_path / "models" / "learns" / "history.csv").open(newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert [int(r["step"]) for r in rows] == [30, 60]
    last = rows[-1]
    assert last["val_psnr"] > last["input_psnr"] + 0.5, rows  # measured: +1.15 dB at step 60
    assert last["val_ssim"] > last["input_ssim"], rows
    assert last["gain_psnr_db"] == pytest.approx(last["val_psnr"] - last["input_psnr"])
