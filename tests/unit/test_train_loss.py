"""Charbonnier loss (eps 1e-3), as the official CharbonnierLoss."""

from __future__ import annotations

import pytest
import torch

from ast_model.train.loss import CharbonnierLoss, charbonnier


def test_matches_the_formula() -> None:
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    want = torch.sqrt((a - b) ** 2 + 1e-6).mean()
    assert torch.allclose(charbonnier(a, b), want)
    assert torch.allclose(CharbonnierLoss(1e-3)(a, b), want)


def test_zero_error_gives_eps_and_a_finite_gradient() -> None:
    a = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = charbonnier(a, a.detach().clone())
    assert loss.item() == pytest.approx(1e-3)
    loss.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().max() == 0


def test_is_l1_like_for_large_errors() -> None:
    a, b = torch.zeros(100), torch.full((100,), 0.5)
    assert charbonnier(a, b).item() == pytest.approx(0.5, rel=1e-5)


def test_half_precision_inputs_are_scored_in_fp32() -> None:
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    loss = charbonnier(a.bfloat16(), b)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(charbonnier(a.bfloat16().float(), b).item(), rel=1e-6)


def test_shape_mismatch_and_bad_eps_raise() -> None:
    with pytest.raises(ValueError, match="differ"):
        charbonnier(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        CharbonnierLoss(0.0)
