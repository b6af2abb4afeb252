"""The whole pipeline at test size: a tiny profile as params overrides, and a temporary git repository of the project.

``TINY_OVERRIDES`` are dotted params keys (the form ``dvc exp run -S``, ``pipelines.params.apply_overrides``
and the Prefect flow's ``overrides`` parameter take): one embedded dataset of a few 64-px pairs, a tiny
AST-T (embed_dim 8, one block per level) trained 8 steps, one task. Prepare to register runs in well under
a minute of stage time on 2 cores; a test applies them through the entry point it tests (flow parameter, or
``write_overrides`` before ``dvc repro``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The tiny AST every fast test builds: AST-T's shape with 8 channels, one block per level and 4x4 windows
# (pads to multiples of 64 px, not 128). tests/conftest.py serves it as the `tiny_ast` fixture.
TINY_AST: dict[str, Any] = {"embed_dim": 8, "depths": [1] * 9, "win_size": 4}

TINY_TASK = "rain"
TINY_DATASET = "embedded_rain"
TINY_PHASE = {"patch_size": 64, "batch_size": 4, "lr": 1.0e-3, "steps": 8}
TINY_OVERRIDES: dict[str, Any] = {
    "data.datasets": {TINY_DATASET: {"source": "embedded", "task": "rain"}},
    # Two nodes x one process x one reader: two training shards are enough (data.max_nodes stays 2).
    "data.max_procs_per_node": 1,
    "data.max_workers": 1,
    "prepare.embedded.short_side": 64,
    "prepare.embedded.photos": {"train": ["astronaut", "chelsea"], "val": ["flower"], "test": ["coffee"]},
    "prepare.embedded.variants": {"train": 4, "val": 1, "test": 2},
    "train.model_overrides": {"embed_dim": 8, "depths": [1] * 9, "win_size": 4},
    "train.phases": [TINY_PHASE],
    "train.schedule": {"warmup_steps": 2, "min_lr": 1.0e-6},
    "train.log_every": 2,
    "train.save_every": 4,
    "train.validation": {"every_steps": 4, "split": "val", "sample_images": 1},
    "evaluate.sample_grids": 1,
    "tasks": {TINY_TASK: {"dataset": TINY_DATASET}},
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def git_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with a git identity (``dvc exp`` and commits need one)."""
    env = dict(os.environ if base is None else base)
    env.update(
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def project_repo(dst: Path) -> Path:
    """A new git repository at ``dst`` holding this checkout's files as they are now, committed.

    The files are those git would commit (tracked, plus new files not ignored), so a test sees uncommitted
    work too; ignored outputs (data, models, mlflow.db, the DVC cache) are not copied, so every stage is
    out of date there. ``.dvc/`` comes along: it is already a DVC repository.
    """
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    dst.mkdir(parents=True)
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is not copied
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    env = git_env()
    _run(["git", "init", "-q"], dst, env)
    _run(["git", "add", "-A"], dst, env)
    _run(["git", "commit", "-qm", "project"], dst, env)
    return dst


def register_tiny(root: Path, *, seed: int, psnr: float, run_id: str | None) -> tuple[Path, dict[str, Any]]:
    """Register a tiny model through the real register stage, as if train and evaluate had run.

    Writes ``models/tiny/best.pt`` (a seeded tiny AST) and its stated test scores ``metrics/tiny.json`` (the
    evaluate stage's typed record) under ``root`` (which holds a params.yaml with a ``train`` profile of
    experiment ``tiny``), then runs the register stage against the current MLflow store.

    Returns:
        ``(checkpoint path, reports/tiny/registry.json as a dict)``.
    """
    import json

    import torch

    from ast_model import create_model, save_checkpoint
    from ast_model.artifacts import EvaluationMetrics
    from ast_model.data.files import sha256_file
    from pipelines.stages import register

    torch.manual_seed(seed)
    checkpoint = save_checkpoint(create_model("ast_t", **TINY_AST), root / "models/tiny/best.pt")
    EvaluationMetrics(
        psnr=psnr,
        ssim=0.8,
        input_psnr=20.0,
        input_ssim=0.6,
        protocol="float",
        y_channel=False,
        crop_border=0,
        count=3,
        per_image=[],
        experiment="tiny",
        dataset="tinyset",
        task="rain",
        split="test",
        weights="best.pt",
        variant="ast_t",
        checkpoint_sha256=sha256_file(checkpoint)[0],
        test_index_sha256="0" * 64,
        tracking_run_id=run_id,
    ).save(root / "metrics/tiny.json")
    args = [
        "--params",
        str(root / "params.yaml"),
        "--models",
        str(root / "models"),
        "--metrics",
        str(root / "metrics"),
        "--reports",
        str(root / "reports"),
        "--requirements",
        str(ROOT / "requirements.txt"),
    ]
    assert register.main(args) == 0
    return checkpoint, json.loads((root / "reports/tiny/registry.json").read_text())
