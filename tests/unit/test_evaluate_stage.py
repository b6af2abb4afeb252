"""The evaluate stage end to end on tiny shards and a tiny AST (pipelines.stages.evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ast_model import create_model, load_checkpoint, save_checkpoint
from ast_model.artifacts import TrainingSummary
from ast_model.data.files import encode_png
from ast_model.data.shards import ShardSample, write_split
from ast_model.eval.metrics import psnr, ssim
from ast_model.eval.restore import restore_image
from pipelines.stages import evaluate
from tests.tiny_pipeline import TINY_AST as TINY

H, W = 24, 32
KEYS = ("coffee_000", "coffee_001", "motorcycle_000")


def _pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Smooth targets and noisy inputs (uint8), so input and restored scores are finite and distinct."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    out = []
    for i, key in enumerate(KEYS):
        target = np.stack([xx * 255 / W, yy * 255 / H, np.full((H, W), 40.0 * (i + 1))], -1).astype(np.uint8)
        noisy = np.clip(target + rng.normal(0, 20, target.shape), 0, 255).astype(np.uint8)
        out.append((key, noisy, target))
    return out


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two different tiny AST checkpoints (best, final)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    best = save_checkpoint(create_model("ast_t", **TINY), folder / "best.pt")
    torch.manual_seed(1)
    final = save_checkpoint(create_model("ast_t", **TINY), folder / "final.pt")
    return best, final


@pytest.fixture
def repo(tmp_path: Path, tiny_models: tuple[Path, Path], monkeypatch) -> Path:
    """params.yaml, test shards of dataset ``tinyset`` and ``models/tiny/{best,final}.pt`` + summary.json."""
    monkeypatch.chdir(tmp_path)
    params = {
        "train": {
            "experiment": "tiny",
            "dataset": "tinyset",
            "phases": [{"patch_size": 16, "batch_size": 1, "lr": 1e-3, "steps": 1}],
        },
        "evaluate": {"sample_grids": 2, "protocol": "matlab", "y_channel": True},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    records = [ShardSample(k, encode_png(x), encode_png(y), {"width": W, "height": H}) for k, x, y in _pairs()]
    info = {"dataset": "tinyset", "source": "embedded", "task": "rain", "split": "test"}
    write_split(tmp_path / "data/shards/tinyset/test", records, lambda r: r, n_shards=2, info=info)
    models = tmp_path / "models" / "tiny"
    models.mkdir(parents=True)
    for path in tiny_models:
        (models / path.name).write_bytes(path.read_bytes())
    _write_summary(models, run_id=None)
    return tmp_path


def _write_summary(model_dir: Path, run_id: str | None, steps: int = 7) -> None:
    """The training summary the train stage would have written (a best model, ``steps`` steps)."""
    TrainingSummary(
        experiment="tiny",
        profile="train",
        model="ast_t",
        world_size=1,
        steps=steps,
        best_step=steps,
        best_path="best.pt",
        tracking_run_id=run_id,
    ).save(model_dir / "summary.json")


def test_metrics_file_grids_and_scores_match_an_independent_computation(repo: Path) -> None:
    assert evaluate.main(["--no-mlflow", "--quiet"]) == 0
    result = json.loads((repo / "metrics/tiny.json").read_text())
    for key in (
        "psnr",
        "ssim",
        "input_psnr",
        "input_ssim",
        "protocol",
        "per_image",
        "count",
        "dataset",
        "task",
        "split",
        "weights",
        "checkpoint_sha256",
        "test_index_sha256",
        "tracking_run_id",
    ):
        assert key in result, key
    assert (result["protocol"], result["y_channel"], result["task"], result["weights"]) == (
        "matlab",
        True,
        "rain",
        "best.pt",
    )
    assert result["count"] == 3 and [row["key"] for row in result["per_image"]] == list(KEYS)
    assert result["tracking_run_id"] is None and result["training_steps"] == 7

    # Independent: restore with the best checkpoint and score with the metric functions directly.
    model = load_checkpoint(repo / "models/tiny/best.pt")
    scoring = dict(y_channel=True, protocol="matlab")
    for row, (_key, noisy, target) in zip(result["per_image"], _pairs(), strict=True):
        restored = restore_image(model, noisy.astype(np.float32) / 255)
        assert row["psnr"] == pytest.approx(psnr(restored, target, **scoring), abs=1e-6)
        assert row["ssim"] == pytest.approx(ssim(restored, target, **scoring), abs=1e-6)
        assert row["input_psnr"] == pytest.approx(psnr(noisy, target, **scoring), abs=1e-9)
    assert result["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["per_image"]]))
    assert result["input_ssim"] == pytest.approx(np.mean([r["input_ssim"] for r in result["per_image"]]))

    grids = sorted((repo / "reports/tiny/samples").iterdir())
    assert [g.name for g in grids] == ["coffee_000.png", "coffee_001.png"]  # sample_grids: 2, in order
    from PIL import Image

    with Image.open(grids[0]) as im:
        grid = np.asarray(im)
    assert grid.shape == (H, 3 * W + 2 * evaluate.GRID_GAP, 3)
    np.testing.assert_array_equal(grid[:, :W], _pairs()[0][1])  # input | restored | target
    np.testing.assert_array_equal(grid[:, -W:], _pairs()[0][2])
    assert not list((repo / "metrics").glob(".*")) and not list((repo / "reports/tiny").glob(".*"))  # no temp files


def test_best_falls_back_to_final_when_training_had_no_validation(repo: Path, capsys) -> None:
    (repo / "models/tiny/best.pt").unlink()
    TrainingSummary(experiment="tiny", profile="train", model="ast_t", world_size=1, steps=7, best_path=None).save(
        repo / "models/tiny/summary.json"
    )
    result = evaluate.run(track=False, progress=False)
    assert result.weights == "final.pt" and "scoring final.pt" in capsys.readouterr().out


def test_max_images_and_no_grids(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"] = {"max_images": 1, "sample_grids": 0, "weights": "final"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    result = evaluate.run(track=False, progress=False)
    assert result.count == 1 and result.weights == "final.pt" and result.protocol == "float"
    assert list((repo / "reports/tiny/samples").iterdir()) == []


def test_bad_params_and_missing_inputs_are_named(repo: Path, capsys) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"] = {"protocl": "float", "crop_border": -1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main(["--no-mlflow"]) == 2
    assert "evaluate.protocl" in capsys.readouterr().err

    params["evaluate"] = {"crop_border": -1, "max_images": 0}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main(["--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "evaluate.crop_border=-1" in err and "evaluate.max_images=0" in err

    params["evaluate"] = {}
    params["train"]["experiment"] = "nothing-trained"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main(["--no-mlflow"]) == 2
    assert "models/nothing-trained/final.pt: no trained weights" in capsys.readouterr().err

    params["train"]["experiment"] = "tiny"
    params["train"]["dataset"] = "missing"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert evaluate.main(["--no-mlflow"]) == 2
    assert "data/shards/missing/test/index.json: missing" in capsys.readouterr().err
    assert not (repo / "metrics").exists()  # nothing written by a failed run

    assert evaluate.main(["--no-mlflow", "--profile", "train_nope"]) == 2
    assert "no training section 'train_nope'" in capsys.readouterr().err


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.stages.evaluate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--section" in result.stdout and "--no-mlflow" in result.stdout


@pytest.mark.slow
def test_logs_into_the_training_run(repo: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from pipelines.tracking import experiment_id

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(uri)
    run = c.create_run(experiment_id(c, "tiny"), run_name="train-train")
    c.set_terminated(run.info.run_id, "FINISHED")
    _write_summary(repo / "models/tiny", run.info.run_id)
    result = evaluate.run(progress=False)
    assert result.tracking_run_id == run.info.run_id
    assert json.loads((repo / "metrics/tiny.json").read_text())["tracking_run_id"] == run.info.run_id
    logged = c.get_run(run.info.run_id)
    assert logged.data.metrics["test/psnr"] == pytest.approx(result.psnr)
    assert logged.data.metrics["test/input_ssim"] == pytest.approx(result.input_ssim)
    assert c.get_metric_history(run.info.run_id, "test/psnr")[0].step == 7
    assert logged.data.tags["evaluate.protocol"] == "matlab" and logged.data.tags["evaluate.task"] == "rain"
    assert logged.info.status == "FINISHED"
    assert [a.path for a in c.list_artifacts(run.info.run_id, "evaluate")] == ["evaluate/samples", "evaluate/tiny.json"]
    assert len(c.list_artifacts(run.info.run_id, "evaluate/samples")) == 2

    # A run id the store does not know (another MLFLOW_TRACKING_URI at training time): a new run instead.
    _write_summary(repo / "models/tiny", "f" * 32)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("sample_grids: 2", "max_images: 1"))
    other = evaluate.run(progress=False)
    assert other.tracking_run_id != run.info.run_id
    assert c.get_run(other.tracking_run_id).data.metrics["test/psnr"] == pytest.approx(other.psnr)
