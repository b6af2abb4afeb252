"""``ast-restore --precision bf16`` on the CPU and ``--compile`` (issue 10, items 3 and 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ast_model import create_model, save_checkpoint
from ast_model.cli import main
from ast_model.eval.restore import RestoreOptions, restore_image
from tests.tiny_pipeline import TINY_AST as TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create_model("ast_t", **TINY), tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, shape in (("a.png", (40, 56, 3)), ("b.png", (33, 60, 3))):  # both pad to 64 x 64
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    return folder


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_bf16_on_cpu_restores_within_bf16_rounding_of_fp32(checkpoint: Path, image_dir: Path, tmp_path: Path) -> None:
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert (
            main(
                [
                    str(image_dir),
                    str(out),
                    "--model",
                    str(checkpoint),
                    "--device",
                    "cpu",
                    "--precision",
                    precision,
                    "--quiet",
                ]
            )
            == 0
        )
        outs[precision] = {p.name: _pixels(p) for p in sorted(out.iterdir())}
    assert outs["fp32"].keys() == outs["bf16"].keys() and len(outs["fp32"]) == 2
    for name, want in outs["fp32"].items():
        assert np.abs(outs["bf16"][name] - want).max() <= 2, name  # 8-bit output: a level or two at most


def test_fp16_still_needs_cuda(checkpoint: Path, image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [str(image_dir), str(tmp_path / "o"), "--model", str(checkpoint), "--device", "cpu", "--precision", "fp16"]
        )
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="CUDA"):
        restore_image(
            create_model("ast_t", **TINY), np.zeros((8, 8, 3), np.float32), RestoreOptions(precision="fp16"), "cpu"
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_cuda_device_without_cuda_is_a_usage_error(
    checkpoint: Path, image_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(image_dir), str(tmp_path / "o"), "--model", str(checkpoint), "--device", "cuda"])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written


def test_compile_flag_restores_the_same_images(
    checkpoint: Path, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile`` (here through the fast aot_eager backend) gives the eager pixels."""
    from ast_model.nn.ast import AST

    real = AST.compile_network
    monkeypatch.setattr(AST, "compile_network", lambda self, **kw: real(self, backend="aot_eager", **kw))
    torch._dynamo.reset()
    outs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        assert main([str(image_dir), str(out), "--model", str(checkpoint), "--device", "cpu", "--quiet", *flag]) == 0
        outs[bool(flag)] = {p.name: _pixels(p) for p in sorted(out.iterdir())}
    for name, want in outs[False].items():
        assert np.array_equal(outs[True][name], want), name
    torch._dynamo.reset()
