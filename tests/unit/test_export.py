"""ONNX export (ast_model.export) and the onnxruntime backend (ast_model.eval.onnx_backend, ast-restore).

One export of a small AST-T (the official window 8, so the graph pads to multiples of 128; 8 channels
instead of 16 to keep the export near a minute on 2 shared cores) serves every test of the module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ast_model import create_model, save_checkpoint
from ast_model.eval.restore import RestoreOptions, restore_image
from ast_model.export import PARITY_SHAPES, GraphPadAST, export_onnx, read_onnx_metadata

pytestmark = pytest.mark.slow
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SMALL_T = dict(embed_dim=8)  # AST-T depths and window; 8 channels
LIMIT = 1e-4  # fp32 parity the issue asks for


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path, object]:
    torch.manual_seed(0)
    model = create_model("ast_t", **SMALL_T).eval()
    path = tmp_path_factory.mktemp("onnx") / "ast_t.onnx"
    result = export_onnx(model, path)
    return model, path, result


def test_parity_at_the_issue_shapes_and_metadata(exported) -> None:
    model, path, result = exported
    assert set(result.parity) == {"x".join(map(str, s)) for s in PARITY_SHAPES}
    assert max(result.parity.values()) <= LIMIT, result.parity
    meta = read_onnx_metadata(path)
    assert meta["variant"] == "ast_t" and meta["pad_multiple"] == "128" and meta["opset"] == "18"
    assert float(meta["parity_max_abs_diff"]) == pytest.approx(result.max_abs_diff)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3])), dims  # symbolic


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 3, 30, 200), (3, 3, 130, 129), (1, 3, 256, 384)])
def test_any_size_works_like_pytorch(exported, shape) -> None:
    # 1x1 and 30x200: pads wider than the image (reflection falls back to replication, decided in the graph);
    # 130x129: just past a multiple; 256x384: no padding at all.
    from ast_model.eval.onnx_backend import OnnxRestorer

    model, path, _ = exported
    x = torch.rand(shape)
    with torch.inference_mode():
        expected = model(x)
    got = OnnxRestorer(path)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= LIMIT


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros"])
def test_graph_padding_equals_the_model_padding(mode) -> None:
    # The gather-based padding of the export wrapper against AST._pad's F.pad (eager, every pad mode).
    torch.manual_seed(0)
    model = create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4, pad_mode=mode).eval()
    wrapped = GraphPadAST(model).eval()
    for shape in [(2, 3, 5, 70), (1, 3, 64, 64), (1, 3, 33, 100), (1, 3, 1, 2)]:
        x = torch.rand(shape)
        with torch.inference_mode():
            torch.testing.assert_close(wrapped(x), model(x), atol=1e-5, rtol=0)


def test_onnxruntime_tiles_and_ensemble_like_pytorch(exported) -> None:
    from ast_model.eval.onnx_backend import OnnxRestorer

    model, path, _ = exported
    image = np.random.default_rng(0).random((100, 200, 3), dtype=np.float32)
    options = RestoreOptions(tile=128, overlap=32, ensemble=True)  # 2 tiles x 8 transforms (~1 s each here)
    got = restore_image(OnnxRestorer(path), image, options)
    expected = restore_image(model, image, options)
    assert np.abs(got - expected).max() <= LIMIT


def test_ast_restore_backend_onnxruntime(exported, tmp_path, capsys) -> None:
    from ast_model.cli import main

    model, path, _ = exported
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "in" / "a.png")
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    assert (
        main([str(tmp_path / "in"), str(tmp_path / "ort"), "--model", str(path), "--backend", "onnxruntime", "--quiet"])
        == 0
    )
    assert main([str(tmp_path / "in"), str(tmp_path / "pt"), "--model", str(ckpt), "--quiet"]) == 0
    with Image.open(tmp_path / "ort" / "a.png") as a, Image.open(tmp_path / "pt" / "a.png") as b:
        ort_px, pt_px = np.asarray(a).astype(int), np.asarray(b).astype(int)
    # Differences of ~1e-7 can only flip a value that sits on a rounding boundary, by one level.
    assert np.abs(ort_px - pt_px).max() <= 1 and (ort_px != pt_px).mean() < 1e-3
    # The wrong pairings are one line each, exit status 2.
    assert main([str(tmp_path / "in"), str(tmp_path / "x"), "--model", str(path), "--quiet"]) == 2
    assert "use --backend onnxruntime" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                str(tmp_path / "in"),
                str(tmp_path / "x"),
                "--model",
                str(path),
                "--backend",
                "onnxruntime",
                "--precision",
                "bf16",
            ]
        )
    assert exit_.value.code == 2


def test_ast_export_command_errors_are_one_line(tmp_path) -> None:
    cmd = [sys.executable, "-m", "ast_model.export"]
    bad_suffix = subprocess.run(cmd + [str(tmp_path / "m.bin"), "--model", "ast_t"], capture_output=True, text=True)
    assert bad_suffix.returncode == 2 and "name it <something>.onnx" in bad_suffix.stderr
    missing = subprocess.run(
        cmd + [str(tmp_path / "m.onnx"), "--model", str(tmp_path / "nope.pt")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert missing.stderr.startswith("ast-export: cannot load the model:") and not (tmp_path / "m.onnx").exists()
    uri = subprocess.run(
        cmd + [str(tmp_path / "m.onnx"), "--model", "models:/rain-ast@champion"], capture_output=True, text=True
    )
    assert uri.returncode == 2 and "resolved by the installed" in uri.stderr


def test_library_imports_no_orchestrator() -> None:
    code = (
        "import sys, ast_model.cli, ast_model.export, ast_model.eval.onnx_backend;"
        "bad = [m for m in ('mlflow', 'prefect', 'dvc', 'gradio') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
