"""Charbonnier loss, the only loss of the official AST recipe (``losses.CharbonnierLoss``)."""

from __future__ import annotations

import torch
from torch import nn


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
