"""The registered champion served for real, and pulled as ONNX (issue: deployment).

A SQLite MLflow store in a temporary folder; the register stage registers a tiny model (which also exports
it to ONNX and attaches the file with its parity tag). Then:

- ``models:/rain-ast@champion`` is downloaded and its ``onnx/model.onnx`` run by onnxruntime in a process
  where ``import torch`` is impossible: the deployable artifact needs no PyTorch;
- ``mlflow models serve -m models:/rain-ast@champion --env-manager local --workers 1`` is started on a
  free 127.0.0.1 port; a base64 PNG is posted, the reply decoded and compared with what ``ast-restore``
  (the installed entry point, ``models:/`` resolved by pipelines) writes for the same file: identical pixels;
  a photo larger than the CPU tile cap is restored tile by tile the same way;
- bad requests (not base64, not an image, a wrong array shape, an unknown key) get a 400 whose message
  says what was expected, not a 500 with a stack trace.

Every process started here is stopped (its process group), and every wait is bounded.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.servers import free_port as _free_port
from tests.servers import stop as _stop
from tests.servers import wait_http as _wait_http
from tests.tiny_pipeline import register_tiny

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # mlflow, and the uvicorn that `mlflow models serve` runs
SERVE_START_S = 180
MODEL = "rain-ast"


def _post(port: int, payload: dict | bytes, timeout: float = 120) -> tuple[int, str]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _png_b64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode_png_b64(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text))) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    """A SQLite store with ``rain-ast`` v1 @champion (registered by the register stage)."""
    from mlflow import MlflowClient

    from pipelines.tracking import experiment_id

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(experiment_id(client, "tiny"), run_name="train-train").info.run_id
        client.set_terminated(run_id, "FINISHED")
        params = {
            "train": {
                "experiment": "tiny",
                "dataset": "tinyset",
                "phases": [{"patch_size": 16, "batch_size": 1, "lr": 1e-3, "steps": 1}],
            },
            "register": {"model_name": "{task}-ast"},
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        checkpoint, result = register_tiny(root, seed=0, psnr=28.0, run_id=run_id)
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return {"root": root, "uri": uri, "checkpoint": checkpoint, "result": result, "client": client}


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "MLFLOW_TRACKING_URI": uri}


def test_the_version_carries_onnx_with_its_parity_and_runs_without_torch(registered) -> None:
    result, client = registered["result"], registered["client"]
    assert result["promoted"]
    tags = client.get_model_version(MODEL, result["version"]).tags
    assert tags["onnx.artifact"] == "onnx/model.onnx" and tags["onnx.opset"] == "18"
    assert float(tags["onnx.parity_max_abs_diff"]) <= 1e-4

    # A process in which torch cannot be imported pulls the champion and runs its ONNX file.
    x = np.random.default_rng(0).random((1, 3, 37, 70), dtype=np.float32)
    np.save(registered["root"] / "x.npy", x)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import mlflow, numpy as np, onnxruntime as ort\n"
        f"local = mlflow.artifacts.download_artifacts('models:/{MODEL}@champion', dst_path=sys.argv[1])\n"
        "session = ort.InferenceSession(local + '/onnx/model.onnx', providers=['CPUExecutionProvider'])\n"
        "np.save(sys.argv[2], session.run(None, {'image': np.load(sys.argv[3])})[0])\n"
    )
    root = registered["root"]
    subprocess.run(
        [sys.executable, "-c", code, str(root / "pulled"), str(root / "y.npy"), str(root / "x.npy")],
        env=_env(registered["uri"]),
        check=True,
        timeout=300,
        cwd=root,
    )
    from ast_model import load_checkpoint

    with torch.inference_mode():
        expected = load_checkpoint(registered["checkpoint"])(torch.from_numpy(x)).numpy()
    assert np.abs(np.load(root / "y.npy") - expected).max() <= 1e-4


def test_served_champion_answers_a_png_like_ast_restore_and_rejects_bad_requests(registered, tmp_path) -> None:
    env = _env(registered["uri"])
    rng = np.random.default_rng(3)
    small = (rng.random((45, 61, 3)) * 255).astype(np.uint8)
    large = (rng.random((400, 450, 3)) * 255).astype(np.uint8)  # > CPU_AUTO_TILE: tiles on the CPU
    (tmp_path / "in").mkdir()
    for name, pixels in (("small", small), ("large", large)):
        Image.fromarray(pixels).save(tmp_path / "in" / f"{name}.png")

    # What ast-restore (the installed entry point: models:/ resolved in pipelines) writes for these files.
    restore = subprocess.run(
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
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert restore.returncode == 0, restore.stderr

    port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{MODEL}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "wb") as fh:
        serve = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", serve, log, SERVE_START_S)
        for name, pixels in (("small", small), ("large", large)):
            status, body = _post(port, {"inputs": {"png": _png_b64(pixels)}})
            assert status == 200, body[:2000]
            restored = _decode_png_b64(json.loads(body)["predictions"]["png"])
            with Image.open(tmp_path / "out" / f"{name}.png") as expected:
                np.testing.assert_array_equal(restored, np.asarray(expected), err_msg=name)

        bad = {
            "not base64": ({"inputs": {"png": "this is not base64!"}}, "not valid base64"),
            "not an image": ({"inputs": {"png": base64.b64encode(b"plain text").decode()}}, "does not hold an image"),
            "wrong shape": ({"inputs": [[0.5, 0.5], [0.5, 0.5]]}, "expected one (H, W, 3) RGB image"),
            "unknown key": ({"inputs": {"jpeg": "abc"}}, 'expected {"inputs": {"png"'),
            "8-bit array": ({"inputs": (small[:4, :4].astype(float)).tolist()}, "divide by 255"),
        }
        for case, (payload, message) in bad.items():
            status, body = _post(port, payload, timeout=60)
            assert status == 400, (case, status, body[:2000])
            assert message in json.loads(body)["message"], (case, body[:2000])
            assert "Traceback" not in body, case
        status, body = _post(port, b"{not json", timeout=60)
        assert status == 400 and "Traceback" not in body
    finally:
        _stop(serve)
