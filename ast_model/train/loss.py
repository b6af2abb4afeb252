"""Training losses: Charbonnier (the only loss of the official AST recipe) and mean squared error.

Why two. Charbonnier with the official ``eps = 1e-3`` is an L1 loss for all but the tiniest errors, and
L1's optimum is the conditional *median*. For a sparse degradation (streaks, drops: most pixels are
clean) a model that is not yet sure whether a pixel is degraded gets the lowest L1 loss by leaving it
unchanged, so early in training the identity is an attractor and a short run ends near it. MSE's optimum
is the conditional *mean*: a pixel that is degraded with probability p is corrected by p times the
degradation, so every bit of detection ability lowers the loss at once (and MSE is what PSNR measures).
The paper-scale recipes keep Charbonnier; the short embedded default trains with MSE (README "Training").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

LossName = Literal["charbonnier", "mse"]


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean over all elements of ``sqrt((pred - target)^2 + eps^2)``.

    Args:
        pred: restored images, any shape.
        target: ground truth, same shape as ``pred``.
        eps: smoothing constant (official 1e-3): near zero error the loss behaves like L2, elsewhere L1.

    Returns:
        A scalar tensor, computed in float32 even for bf16 / fp16 inputs (the square of a small
        difference underflows in half precision).
    """
    if pred.shape != target.shape:
        raise ValueError(f"charbonnier: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = pred.float() - target.float()
    return torch.sqrt(diff * diff + eps * eps).mean()


class CharbonnierLoss(nn.Module):
    """:func:`charbonnier` as a module (``eps`` fixed at construction)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"CharbonnierLoss: eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See :func:`charbonnier`."""
        return charbonnier(pred, target, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, computed in float32 (like :func:`charbonnier`).

    Args:
        pred: restored images, any shape.
        target: ground truth, same shape as ``pred``.

    Returns:
        A scalar tensor.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = pred.float() - target.float()
    return (diff * diff).mean()


def build_loss(name: LossName, eps: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss by name (``train.loss``).

    Args:
        name: ``charbonnier`` (uses ``eps``) or ``mse``.
        eps: Charbonnier's smoothing constant (``train.loss_eps``).

    Returns:
        ``loss(pred, target) -> scalar``.
    """
    if name == "charbonnier":
        return CharbonnierLoss(eps)
    if name == "mse":
        return mse
    raise ValueError(f"unknown loss {name!r} (known: charbonnier, mse)")
