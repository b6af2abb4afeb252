"""The metrics dictionary of the evaluate stage (ast_model.eval.evaluate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ast_model.eval.evaluate import evaluate_pairs
from ast_model.eval.metrics import psnr, ssim


class Halfway(nn.Module):
    """A 'restoration' that moves the input halfway towards a known target value."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.value) / 2


def test_evaluate_pairs_scores_restored_and_input_against_target() -> None:
    rng = np.random.default_rng(0)
    target = np.full((16, 20, 3), 0.5, np.float32)
    degraded = (rng.random((16, 20, 3)) * 255).astype(np.uint8)  # uint8 inputs are accepted
    seen = []
    result = evaluate_pairs(
        Halfway(0.5),
        [("a", degraded, target), ("b", degraded, (target * 255).astype(np.uint8))],
        protocol="matlab",
        y_channel=True,
        on_result=lambda key, *images: seen.append((key, [im.shape for im in images])),
    )
    restored = (degraded / 255.0 + 0.5) / 2
    expected = psnr(restored, target, y_channel=True, protocol="matlab")
    assert result.per_image[0].psnr == pytest.approx(expected)
    expected_input = ssim(degraded, target, y_channel=True, protocol="matlab")
    assert result.per_image[0].input_ssim == pytest.approx(expected_input)
    assert result.psnr > result.input_psnr and result.gain_psnr > 0  # halfway to the target beats the input
    assert result.protocol == "matlab" and result.count == 2 and [r.key for r in result.per_image] == ["a", "b"]
    assert [key for key, _ in seen] == ["a", "b"] and seen[0][1] == [(16, 20, 3)] * 3


def test_evaluate_pairs_needs_pairs() -> None:
    with pytest.raises(ValueError, match="no image pairs"):
        evaluate_pairs(Halfway(0.5), [])
