"""Faults: a NaN loss stops every rank with the last good checkpoint intact; a dying rank fails the launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("train_fault_worker.py")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")
    }
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra)
    return env


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max_restarts",
        "0",
        *args,
    ]


def _assert_last_good_checkpoint_intact(out_dir: Path) -> None:
    ckpt = out_dir / "ckpt"
    marker = json.loads((ckpt / "latest.json").read_text())
    assert marker["step"] == 4 and marker["tag"] == "step_00000004"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000004"]  # nothing written after the NaN
    assert not (out_dir / "models" / "final.pt").exists()


def test_nan_loss_single_process_without_launcher(tmp_path: Path, torch_extensions_dir: Path) -> None:
    # No RANK / WORLD_SIZE / MASTER_* at all: one process must work without any launcher environment.
    proc = subprocess.run(
        [sys.executable, str(WORKER), "nan", str(tmp_path)],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "NonFiniteLossError: non-finite loss at step 7 (phase 0" in proc.stderr
    assert f"Last good checkpoint: {tmp_path / 'ckpt' / 'step_00000004'} (step 4)" in proc.stderr
    _assert_last_good_checkpoint_intact(tmp_path)


def test_nan_on_one_rank_stops_both(tmp_path: Path, torch_extensions_dir: Path) -> None:
    proc = subprocess.run(
        _torchrun(str(WORKER), "nan", str(tmp_path)),
        env=_env(FAULT_RANK="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # Both ranks stop at the same step with the same message (no rank left waiting in a collective).
    assert out.count("non-finite loss at step 7 (phase 0") >= 2 and "on 1 of 2 rank(s)" in out
    _assert_last_good_checkpoint_intact(tmp_path)


def test_a_dying_rank_fails_the_launch_without_hanging(tmp_path: Path, torch_extensions_dir: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        _torchrun(str(WORKER), "die", str(tmp_path)),
        env=_env(FAULT_RANK="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "exitcode  : 17" in proc.stdout + proc.stderr  # torchrun names the rank that died
    assert elapsed < 120, f"the launch took {elapsed:.0f} s to notice the dead rank"
