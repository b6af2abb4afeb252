"""The model registry against a real MLflow server: the champion gate, `mlflow models serve`, `ast-restore`.

One MLflow tracking server (SQLite store and served artifacts in a temporary folder) on a free 127.0.0.1
port; the register stage runs three times against it (a first model, a better one, a worse one); then the
champion is served with ``mlflow models serve --env-manager local`` and answers a real HTTP request, and
``ast-restore --model models:/rain-ast@champion`` restores a file. Every process started here is stopped
(its whole process group) at the end, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ast_model import load_checkpoint
from ast_model.eval.images import to_uint8
from ast_model.eval.restore import restore_image
from tests.servers import free_port as _free_port
from tests.servers import start as _start
from tests.servers import stop as _stop
from tests.servers import wait_http as _wait_http
from tests.tiny_pipeline import register_tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent  # mlflow, and the uvicorn that `mlflow models serve` runs through bash
SERVER_START_S = 90
SERVE_START_S = 180
MODEL = "rain-ast"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """``http://127.0.0.1:<port>`` of a fresh tracking server with served artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    # Without the job runner and with one worker the server starts in ~5 s as 2 processes (docs/environment.md).
    proc = _start(cmd, root / "server.log", _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), root)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, root / "server.log", SERVER_START_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _workspace(root: Path) -> Path:
    params = {
        "train": {
            "experiment": "tiny",
            "dataset": "tinyset",
            "phases": [{"patch_size": 16, "batch_size": 1, "lr": 1e-3, "steps": 1}],
        },
        "register": {"model_name": "{task}-ast"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _register(ws: Path, *, seed: int, psnr: float, run_id: str) -> dict:
    """Save a tiny model as models/tiny/best.pt, write its (stated) test metrics, run the register stage."""
    return register_tiny(ws, seed=seed, psnr=psnr, run_id=run_id)[1]


def test_gate_serving_and_ast_restore_against_a_real_server(mlflow_server: str, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from pipelines.tracking import experiment_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    ws = _workspace(tmp_path)
    client = MlflowClient(mlflow_server)
    run_id = client.create_run(experiment_id(client, "tiny"), run_name="train-train").info.run_id
    client.set_terminated(run_id, "FINISHED")

    first = _register(ws, seed=0, psnr=28.0, run_id=run_id)
    assert first["promoted"] and first["version"] == "1" and first["reason"].startswith("first champion")
    better = _register(ws, seed=1, psnr=30.0, run_id=run_id)
    champion = load_checkpoint(ws / "models/tiny/best.pt")  # the weights that must be served below
    assert better["promoted"] and better["version"] == "2" and better["previous_champion"]["version"] == "1"
    worse = _register(ws, seed=2, psnr=26.0, run_id=run_id)
    assert not worse["promoted"] and worse["version"] == "3" and worse["champion_version"] == "2"

    # The registry itself: the alias, the tags, the reason, the link to the training run.
    assert client.get_registered_model(MODEL).aliases == {"champion": "2"}
    v3 = client.get_model_version(MODEL, "3")
    assert "does not beat v2's 30.0000 dB" in v3.tags["challenger"] and v3.tags["gate.decision"] == "challenger"
    assert v3.tags["test.psnr"] == "26.0" and v3.tags["test.protocol"] == "float" and v3.run_id == run_id
    assert "challenger" not in client.get_model_version(MODEL, "2").tags
    assert len(client.get_run(run_id).outputs.model_outputs) == 3

    # `mlflow models serve` of the champion answers a real REST request with the restored image.
    port = _free_port()
    log = tmp_path / "serve.log"
    serve = _start(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "--env-manager",
            "local",
            "-m",
            f"models:/{MODEL}@champion",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        log,
        _env(MLFLOW_TRACKING_URI=mlflow_server),
        tmp_path,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", serve, log, SERVE_START_S)
        image = np.random.default_rng(0).random((20, 36, 3), dtype=np.float32)
        body = json.dumps({"inputs": image.tolist(), "params": {"ensemble": False}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            restored = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
        assert restored.shape == image.shape and 0 <= restored.min() and restored.max() <= 1
        np.testing.assert_allclose(restored, restore_image(champion, image), atol=1e-5)

        bad = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": (image * 255).tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(bad, timeout=60)
        assert error.value.code == 400 and "divide by 255" in error.value.read().decode()
    finally:
        _stop(serve)

    # `ast-restore --model models:/rain-ast@champion` loads the checkpoint shipped with the registered model.
    (tmp_path / "in").mkdir()
    photo = (np.random.default_rng(1).random((18, 22, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "in" / "photo.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.model_source",
            str(tmp_path / "in"),
            str(tmp_path / "out"),
            "--model",
            f"models:/{MODEL}@champion",
            "--quiet",
        ],
        env=_env(MLFLOW_TRACKING_URI=mlflow_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = to_uint8(restore_image(champion, photo.astype(np.float32) / 255))
    with Image.open(tmp_path / "out" / "photo.png") as out:
        np.testing.assert_array_equal(np.asarray(out), expected)
