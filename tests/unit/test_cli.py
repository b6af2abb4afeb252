"""``ast-restore`` end to end on real files, and the image IO it relies on (ast_model.cli, .eval.images)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ast_model import create_model, save_checkpoint
from ast_model.checkpoint import CheckpointError
from ast_model.cli import collect_inputs, load_model, main
from ast_model.eval.images import ImageReadError, read_image, save_png

TINY = dict(embed_dim=8, depths=[1] * 9)


def pixels(path: Path) -> np.ndarray:
    """The decoded file (closed again: no ResourceWarning)."""
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create_model("ast_t", **TINY), tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def fast_model(monkeypatch) -> str:
    """Make ``--model fast`` a tiny conv net, for tests about files rather than the model (AST pads every
    image to 128x128, which costs a second per image on a shared CPU)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid())
    real = load_model

    def fake_load_model(spec: str, weights: str | None = None, **options) -> torch.nn.Module:
        return net if spec == "fast" else real(spec, weights, **options)

    monkeypatch.setattr("ast_model.cli.load_model", fake_load_model)
    return "fast"


@pytest.fixture
def folder(tmp_path) -> Path:
    """Every kind of input the CLI must handle, plus one corrupt file and one non-image."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (17, 9), dtype=np.uint8)).save(d / "gray.png")
    Image.fromarray(rng.integers(0, 256, (12, 13, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (10, 11), dtype=np.uint16)).save(d / "deep16.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(d / "photo.jpg", quality=90)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "dot.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (d / "notes.txt").write_text("not an image")
    return d


# ---------------------------------------------------------------------------------------------- image IO
def test_read_image_converts_every_mode_to_float_rgb(folder: Path) -> None:
    for name in ("rgb.png", "gray.png", "rgba.png", "deep16.png", "photo.jpg", "dot.png"):
        image = read_image(folder / name)
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.float32, name
        assert 0 <= image.min() and image.max() <= 1, name
    rgba = pixels(folder / "rgba.png")
    np.testing.assert_allclose(read_image(folder / "rgba.png"), rgba[..., :3] / 255, atol=1e-7)
    deep = pixels(folder / "deep16.png").astype(np.float64)
    np.testing.assert_allclose(read_image(folder / "deep16.png")[..., 1], deep / 65535, atol=1e-7)  # full depth
    with pytest.raises(ImageReadError, match="corrupt.png"):
        read_image(folder / "corrupt.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(folder / "missing.png")


def test_save_png_is_atomic_and_round_trips(tmp_path: Path) -> None:
    image = np.random.default_rng(1).random((9, 7, 3)).astype(np.float32)
    dest = save_png(tmp_path / "sub" / "out.png", image)
    assert [p.name for p in dest.parent.iterdir()] == ["out.png"]  # no temporary left behind
    np.testing.assert_array_equal(pixels(dest), np.rint(image * 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_restores_a_folder_names_the_corrupt_file_and_fails_at_the_end(folder, fast_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(folder), str(out), "--model", fast_model, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "corrupt.png" in err and "6 restored" in err
    expected = {
        "rgb": (20, 24), "gray": (17, 9), "rgba": (12, 13), "deep16": (10, 11), "photo": (16, 16), "dot": (1, 1)
    }  # fmt: skip
    assert sorted(p.stem for p in out.iterdir()) == sorted(expected)
    for stem, (h, w) in expected.items():
        assert pixels(out / f"{stem}.png").shape == (h, w, 3)  # RGB, input size


def test_cli_output_is_the_library_result_of_the_checkpoint(folder, checkpoint, tmp_path) -> None:
    from ast_model.eval.restore import RestoreOptions, restore_image

    out, src = tmp_path / "out", str(folder / "rgb.png")
    assert main([src, str(out), "--model", str(checkpoint), "--tile", "0", "--device", "cpu", "--quiet"]) == 0
    expected = restore_image(load_model(str(checkpoint)), read_image(src), RestoreOptions(tile=None))
    np.testing.assert_array_equal(pixels(out / "rgb.png"), np.rint(expected * 255).astype(np.uint8))


def test_cli_tiles_and_ensembles_on_request(folder, fast_model, tmp_path) -> None:
    out, src = tmp_path / "out", str(folder / "rgb.png")
    args = ["--model", fast_model, "--tile", "16", "--overlap", "4", "--ensemble", "--quiet"]
    assert main([src, str(out), *args]) == 0
    assert pixels(out / "rgb.png").shape == (20, 24, 3)
    assert main([src, str(tmp_path / "mean"), *args, "--blend", "mean"]) == 0
    with pytest.raises(SystemExit):
        main([src, str(out), "--model", fast_model, "--tile", "big"])


def test_cli_accepts_globs_and_keeps_colliding_names_apart(folder, fast_model, tmp_path) -> None:
    Image.fromarray(pixels(folder / "rgb.png")).save(folder / "photo.png")  # photo.jpg and photo.png -> two outputs
    out = tmp_path / "out"
    assert main([str(folder / "photo.*"), str(out), "--model", fast_model, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo.png", "photo_png.png"]


def test_load_model_official_pth_and_variant_with_weights(checkpoint, tmp_path) -> None:
    project = load_model(str(checkpoint))
    official = tmp_path / "official.pth"
    state = {f"module.{k}": v for k, v in project.state_dict().items()}  # DataParallel keys, as released
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {}}, official)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        reference = project(x)
        torch.testing.assert_close(load_model(str(official))(x), reference)  # variant inferred from shapes
        torch.testing.assert_close(load_model("ast_t", str(checkpoint))(x), reference)
    with pytest.raises(CheckpointError, match="does not fit"):  # these weights are not a full-size AST-T
        load_model("ast_t", str(official))
    with pytest.raises(CheckpointError, match="not ast_b"):
        load_model("ast_b", str(checkpoint))


def test_cli_bad_model_arguments_exit_2(folder, checkpoint, tmp_path, capsys) -> None:
    out = str(tmp_path / "out")
    assert main([str(folder), out, "--model", "ast_t", "--quiet"]) == 2  # a variant needs weights
    assert main([str(folder), out, "--model", str(tmp_path / "nope.pt"), "--quiet"]) == 2
    assert main([str(folder), out, "--model", str(folder / "corrupt.png"), "--quiet"]) == 2
    assert "needs --weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(folder), out, "--model", str(checkpoint), "--precision", "fp16", "--device", "cpu"])
    assert exc.value.code == 2
    assert not Path(out).exists()


def test_cli_missing_input_is_named_and_the_rest_restored(folder, fast_model, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main([str(folder / "dot.png"), str(folder / "absent.png"), str(out), "--model", fast_model, "--quiet"])
    assert code == 1
    assert "absent.png" in capsys.readouterr().err
    assert (out / "dot.png").exists()


def test_collect_inputs_skips_non_images_in_folders(folder) -> None:
    files, missing = collect_inputs([str(folder), str(folder / "rgb.png"), "nothing/*.png"])
    assert "notes.txt" not in {p.name for p in files}
    assert len(files) == len(set(files)) == 7  # rgb.png listed twice, kept once; corrupt.png included
    assert missing == ["nothing/*.png"]


def test_mlflow_uri_loads_the_checkpoint_among_the_artifacts(checkpoint, tmp_path, monkeypatch) -> None:
    # MLflow URIs resolve in pipelines (the library fetches nothing): ast-restore's entry point plugs
    # pipelines.model_source.resolve into ast_model.cli. A stand-in for mlflow: the registry download
    # returns a model folder holding the project checkpoint.
    from pipelines.model_source import load_model as load_any

    model_dir = tmp_path / "downloaded" / "artifacts"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(checkpoint.read_bytes())
    calls = []

    def download_artifacts(artifact_uri: str) -> str:
        calls.append(artifact_uri)
        return str(model_dir.parent)

    fake = types.ModuleType("mlflow")
    fake.artifacts = types.SimpleNamespace(download_artifacts=download_artifacts)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    with pytest.raises(ValueError, match="URIs are resolved by the installed `ast-restore`"):
        load_model("models:/derain-ast@champion")  # the library alone: one clear line, no fetch
    assert calls == []
    model = load_any("models:/derain-ast@champion")
    assert calls == ["models:/derain-ast@champion"]
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_model(str(checkpoint))(x))
    with pytest.raises(ValueError, match="--weights"):
        load_any("runs:/abc/model", weights=str(checkpoint))

    def unreachable(artifact_uri: str) -> str:
        raise RuntimeError("registry not reachable")

    fake.artifacts = types.SimpleNamespace(download_artifacts=unreachable)
    with pytest.raises(ValueError, match="cannot fetch models:/x@y"):
        load_any("models:/x@y")


def test_module_entry_point_help_and_no_tracking_imports() -> None:
    code = (
        "import sys, ast_model, ast_model.cli, ast_model.eval.metrics, ast_model.eval.restore;"
        "bad = [m for m in ('mlflow', 'prefect', 'dvc') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "ast_model.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--ensemble" in result.stdout and "models:/" in result.stdout


@pytest.mark.slow
def test_runs_uri_against_a_real_local_mlflow_store(checkpoint, tmp_path, monkeypatch) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow defaults (./mlruns) must not land in the repository
    # set_tracking_uri also exports MLFLOW_TRACKING_URI: monkeypatch restores both after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None, raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("restore", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifact(str(checkpoint), artifact_path="model")
    from pipelines.model_source import load_model as load_any

    model = load_any(f"runs:/{run.info.run_id}/model")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), load_model(str(checkpoint))(x))


@pytest.mark.parametrize("command", ["restore", "export"])
def test_a_model_uri_on_a_dead_tracking_server_fails_in_one_line(folder, tmp_path, monkeypatch, capsys, command):
    """``models:/...`` with nothing listening at MLFLOW_TRACKING_URI: exit 2 and one line at once, instead of
    MLflow's minutes of retries (issue 13's tracking pre-flight, for the commands that read the registry)."""
    import socket
    import time

    from pipelines import model_source

    with socket.socket() as s:  # a real port with nothing listening once closed
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    if command == "restore":
        status = model_source.restore_main([str(folder / "rgb.png"), str(tmp_path / "out"), "--model", "models:/m@a"])
    else:
        status = model_source.export_main(["--model", "models:/m@a", str(tmp_path / "m.onnx")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert f"cannot fetch models:/m@a: tracking server {uri} is unreachable" in lines[0]
    assert "unset MLFLOW_TRACKING_URI" in lines[0] and "--local-store" not in lines[0]  # no such option here
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()
