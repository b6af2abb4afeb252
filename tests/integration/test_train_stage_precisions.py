"""Every CPU training precision through the real train stage (DeepSpeed in-process, gloo), and ``compile``.

fp32, bf16 (DeepSpeed's whole-model bf16) and autocast_bf16 (DeepSpeed's ``torch_autocast``: fp32 weights
and AdamW, bf16 autocast forward) each train the same tiny model for the same steps from the same seed.
fp16 and autocast_fp16 need a GPU (the stage refuses them on CPU; ``tests/gpu`` covers the model side).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.integration.test_train_distributed import PROFILE, _env, _ok, _split, _weights

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT = 1800  # a launch takes ~15-30 s on 2 idle cores; compile adds inductor's C++ builds (minutes)
STEPS = 6


def _profile(experiment: str, **changes) -> dict:
    return {
        **PROFILE,
        "experiment": experiment,
        "phases": [{"patch_size": 64, "batch_size": 4, "lr": 1e-3, "steps": STEPS}],
        "save_every": STEPS,
        "validation": {"every_steps": STEPS, "sample_images": 1},
        **changes,
    }


PROFILES = {
    "train_fp32": _profile("fp32", precision="fp32"),
    "train_bf16": _profile("bf16", precision="bf16"),
    "train_autocast": _profile("autocast", precision="autocast_bf16"),
    "train_compiled": _profile("compiled", precision="fp32", compile=True),
    "train_fp16": _profile("fp16", precision="autocast_fp16"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, torch_extensions_dir: Path) -> Path:
    """Shards, a dvc.lock naming them, one profile per precision, and git history (the stage tags runs)."""
    ws = tmp_path_factory.mktemp("precision")
    _split(ws / "data" / "shards" / "tiny" / "train", 8, 4, seed=0)
    _split(ws / "data" / "shards" / "tiny" / "val", 2, 1, seed=1)
    (ws / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  shard:\n    cmd: python -m pipelines.stages.shard\n    outs:\n"
        "    - path: data/shards\n      md5: 0123456789abcdef.dir\n      size: 1\n      nfiles: 1\n"
    )
    params = {"model": {"name": "ast_t", "bottleneck_shift": False}, **PROFILES}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=ws, check=True)
    subprocess.run(git + ["add", "params.yaml", "dvc.lock"], cwd=ws, check=True)
    subprocess.run(git + ["commit", "-qm", "params"], cwd=ws, check=True)
    return ws


def _train(ws: Path, profile: str) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """Run the stage in-process (one process, no launcher); returns (config.json, summary.json, final weights)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.stages.train", "--profile", profile],
        cwd=ws,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    _ok(proc)
    out = ws / "models" / PROFILES[profile]["experiment"]
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return config, summary, _weights(out / "final.pt")


@pytest.fixture(scope="module")
def fp32_run(workspace: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    return _train(workspace, "train_fp32")


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative L2 distance between two state dicts' parameters (floating tensors)."""
    num = sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a if a[k].is_floating_point())
    den = sum((b[k].float() ** 2).sum() for k in b if b[k].is_floating_point())
    return float((num / den).sqrt())


@pytest.mark.parametrize("profile,section", [("train_bf16", "bf16"), ("train_autocast", "torch_autocast")])
def test_half_precisions_train_close_to_fp32(workspace: Path, fp32_run: tuple, profile: str, section: str) -> None:
    config, summary, weights = _train(workspace, profile)
    ref_config, ref_summary, ref_weights = fp32_run
    assert section in config["deepspeed"] and not ({"bf16", "torch_autocast"} - {section}) & set(config["deepspeed"])
    assert summary["steps"] == STEPS and summary["final_val_psnr"] is not None
    # Exported weights are the fp32 masters in either mode (never the rounded bf16 copies).
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    distance = _distance(weights, ref_weights)
    assert 0 < distance < 0.05, distance  # the precision took effect, and training followed the fp32 run
    assert abs(summary["final_val_psnr"] - ref_summary["final_val_psnr"]) < 1.0


def test_fp16_needs_a_gpu(workspace: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.stages.train", "--profile", "train_fp16", "--check"],
        cwd=workspace,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert proc.returncode == 2 and "train_fp16.precision=autocast_fp16 needs a GPU" in proc.stdout + proc.stderr


def test_compile_switch_trains_the_same_model(workspace: Path, fp32_run: tuple) -> None:
    """``compile: true`` (inductor, one compilation per patch size) follows the eager fp32 run.

    Not bit for bit: inductor reorders float sums, and under compile the stochastic-depth masks come from
    inductor's own RNG, not the eager generator's draws.
    """
    _, summary, weights = _train(workspace, "train_compiled")
    assert summary["steps"] == STEPS and summary["final_val_psnr"] is not None
    assert 0 < _distance(weights, fp32_run[2]) < 0.05
