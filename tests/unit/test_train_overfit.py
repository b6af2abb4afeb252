"""Single-batch overfit: the first sanity check of a training setup.

AST-T (4x4 windows) fits 4 fixed 64-px crops of the embedded rain set with the library's own pieces
(model, identity start, loss). A broken gradient, a loss that ignores its input, a model that cannot
change its output, or an init that starts far from the input would each keep the gain near or below 0.
The crops are real streaks on real photos, not noise, and stay fixed, so the gain measures fitting only.

Measured on the 2-core machine: +3.0 dB after 30 steps (loss 0.0113 -> 0.0059). With the official init
instead of the identity start the same setup is at +0.7 dB after 25 steps (it first has to cancel its own
random residual), so the 2 dB bar also catches that. A +15 dB overfit takes hundreds of steps here, for AST
and for a plain 9-layer CNN alike (+3.0 dB after 100 steps), too long for a unit test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ast_model import create_model
from ast_model.data import embedded
from ast_model.data.config import EmbeddedConfig
from ast_model.data.transforms import to_tensor_batch
from ast_model.train.init import start_as_identity
from ast_model.train.loss import build_loss

pytestmark = pytest.mark.slow


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def _fixed_crops(n: int = 4, patch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = EmbeddedConfig(photos={"train": ["astronaut", "chelsea"]}, variants={"train": 2}, short_side=96)
    pairs = list(embedded.generate_split("rain", "train", cfg))[:n]
    rng = np.random.default_rng(0)
    inputs, targets = [], []
    for p in pairs:
        h, w = p.input.shape[:2]
        y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
        inputs.append(p.input[y : y + patch, x : x + patch])
        targets.append(p.target[y : y + patch, x : x + patch])
    return to_tensor_batch(inputs), to_tensor_batch(targets)  # (4, 3, 64, 64) each


def test_ast_t_overfits_four_fixed_crops() -> None:
    torch.manual_seed(0)
    x, y = _fixed_crops()
    model = create_model("ast_t", win_size=4, drop_path_rate=0.0)
    start_as_identity(model)
    with torch.no_grad():
        assert torch.equal(model(x), x)  # the untrained model is the identity: gain 0, not below
    loss_fn = build_loss("mse")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        gain = _psnr(model(x).clamp(0, 1), y) - _psnr(x, y)
    assert losses[-1] < 0.75 * losses[0], losses
    print(f"overfit: {gain:+.2f} dB after {STEPS} steps, loss {losses[0]:.5f} -> {losses[-1]:.5f}")
    assert gain > MIN_GAIN_DB, f"fitted 4 crops by only {gain:+.2f} dB in {STEPS} steps"


STEPS = 30
MIN_GAIN_DB = 2.0
