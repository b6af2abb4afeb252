"""Learning-curve files (history.csv), the curves report, the loss choice and the identity start."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ast_model import create_model
from ast_model.train.history import HISTORY_FIELDS, read_history, write_history
from ast_model.train.init import start_as_identity
from ast_model.train.loss import build_loss, charbonnier, mse
from pipelines import curves


def _rows(gains: list[float]) -> list[dict[str, float]]:
    return [
        {
            "step": 50.0 * (i + 1),
            "images": 200.0 * (i + 1),
            "train_seconds": 30.0 * (i + 1),
            "train_loss": 0.01,
            "val_psnr": 22.0 + g,
            "val_ssim": 0.80 + g / 100,
            "input_psnr": 22.0,
            "input_ssim": 0.80,
            "gain_psnr_db": g,
            "gain_ssim": g / 100,
        }
        for i, g in enumerate(gains)
    ]


def test_history_round_trip_and_errors(tmp_path: Path) -> None:
    rows = _rows([0.5, 1.25])
    path = write_history(rows, tmp_path / "sub" / "history.csv")
    assert path.read_text().splitlines()[0] == ",".join(HISTORY_FIELDS)
    assert read_history(path) == rows
    with pytest.raises(FileNotFoundError, match="no training history"):
        read_history(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("step,val_psnr\n1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) images"):
        read_history(tmp_path / "bad.csv")


def test_curves_writes_one_csv_per_task_and_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_history(_rows([0.2, 0.9]), tmp_path / "rain.csv")
    write_history(_rows([1.0, 3.5]), tmp_path / "haze.csv")
    out = tmp_path / "report"
    assert (
        curves.main(
            ["--run", f"rain={tmp_path / 'rain.csv'}", "--run", f"haze={tmp_path / 'haze.csv'}", "--out", str(out)]
        )
        == 0
    )
    assert read_history(out / "haze.csv")[-1]["gain_psnr_db"] == 3.5
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "haze: step 100: PSNR 22.00 -> 25.50 dB (+3.50)" in capsys.readouterr().out
    assert curves.main(["--run", f"rain={tmp_path / 'nope.csv'}", "--out", str(out)]) == 2
    assert curves.main(["--run", "no-equals-sign", "--out", str(out)]) == 2
    errors = capsys.readouterr().err.splitlines()  # one line each, on stderr
    assert len(errors) == 2 and errors[0].startswith("curves: ") and "nope.csv" in errors[0], errors
    assert "expected TASK=PATH" in errors[1]


def test_build_loss_names_and_values() -> None:
    pred, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert float(build_loss("mse")(pred, target)) == pytest.approx(0.25)
    assert float(build_loss("charbonnier", 1e-3)(pred, target)) == pytest.approx(float(charbonnier(pred, target)))
    assert mse(pred.bfloat16(), target.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        build_loss("l3")  # type: ignore[arg-type]


def test_identity_start_returns_the_input_and_still_trains() -> None:
    model = create_model("ast_t", win_size=4, embed_dim=8, depths=[1] * 9)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        before = float(((model(x) - x) ** 2).mean())
    start_as_identity(model)
    with torch.no_grad():
        assert torch.equal(model(x), x)
    assert before > 1e-4  # the official init really starts away from the input
    # After one step the output projection is no longer zero, so gradients reach the whole network.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ((model(x) - 0.5 * x) ** 2).mean().backward()
    opt.step()
    opt.zero_grad()
    ((model(x) - 0.5 * x) ** 2).mean().backward()
    assert model.input_proj.proj[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert math.isfinite(float(model(x).sum()))


def test_identity_start_needs_the_global_residual() -> None:
    with pytest.raises(ValueError, match="global residual"):
        start_as_identity(create_model("ast_t", win_size=4, embed_dim=8, depths=[1] * 9, out_chans=1))
