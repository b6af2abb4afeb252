"""Memory-lean autograd functions for the hot spots of AST training.

Both compute exactly the official math; they only change what autograd keeps for the backward pass
(recomputing cheap element-wise results instead of storing them). The plain, spec-literal versions live
in :mod:`ast_model.nn.reference`; tests compare the two forward and backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mix(s: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense and sparse branches of ASSA and their mix: ``A = w0 softmax(S) + w1 relu(S)^2``."""
    p = torch.softmax(s, dim=-1)
    r = torch.relu(s)
    return w[0] * p + w[1] * (r * r), p, r


def _scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    s = q @ k.transpose(-2, -1)  # (B, nW, h, N, N)
    s = s + bias  # bias (h, N, N) broadcasts over batch and windows
    if mask is not None:
        s = s + mask  # mask (nW, 1, N, N) broadcasts over batch and heads
    return s


class _WindowASSA(torch.autograd.Function):
    """``out = (w0 softmax(S) + w1 relu(S)^2) v`` with ``S = q k^T + bias (+ mask)``, per window.

    Saves only q, k, v (each N x d per head) and recomputes the N x N scores in the backward pass, so
    no ``(B, nW, h, N, N)`` tensor is kept between forward and backward (flash-attention style; here
    N = 64, so recomputing one ``q k^T`` costs little next to the three N x N tensors autograd would keep).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, mask, w):  # type: ignore[override]
        s = _scores(q, k, bias, mask)
        a, _, _ = _mix(s, w)
        ctx.save_for_backward(q, k, v, bias, mask, w)
        return a @ v  # (B, nW, h, N, d)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, mask, w = ctx.saved_tensors
        s = _scores(q, k, bias, mask)
        a, p, r = _mix(s, w)
        grad_a = grad_out @ v.transpose(-2, -1)  # (B, nW, h, N, N)
        grad_v = a.transpose(-2, -1) @ grad_out
        grad_w = torch.stack(((grad_a * p).sum(), (grad_a * r * r).sum())) if ctx.needs_input_grad[5] else None
        # softmax backward: p * (g - sum(g * p)); relu(S)^2 backward: 2 relu(S) g.
        grad_s = w[0] * p * (grad_a - (grad_a * p).sum(-1, keepdim=True)) + (2 * w[1]) * r * grad_a
        grad_q = grad_s @ k
        grad_k = grad_s.transpose(-2, -1) @ q
        grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_bias = grad_s.sum(dim=tuple(range(grad_s.dim() - bias.dim())))
        return grad_q, grad_k, grad_v, grad_bias, None, grad_w


def window_assa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None, w: torch.Tensor
) -> torch.Tensor:
    """Adaptive sparse self-attention inside windows (memory-lean autograd).

    Args:
        q, k, v: ``(B, nW, h, N, d)``; q already scaled by ``d**-0.5``.
        bias: ``(h, N, N)`` relative position bias.
        mask: ``(nW, 1, N, N)`` shift mask (0 / -100) or None.
        w: ``(2,)`` branch weights, already softmax-normalised.

    Returns:
        ``(B, nW, h, N, d)``.
    """
    if mask is None:
        mask = torch.zeros((), dtype=q.dtype, device=q.device)  # save_for_backward needs a tensor
    return _WindowASSA.apply(q, k, v, bias, mask, w)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the exact (erf) GELU: Phi(x) + x phi(x)."""
    return 0.5 * (1.0 + torch.erf(x * _INV_SQRT2)) + x * torch.exp(-0.5 * x * x) * _INV_SQRT2PI


class _GeluGate(torch.autograd.Function):
    """``gelu(a) * gelu(g)``, keeping only the two pre-activations for the backward pass."""

    @staticmethod
    def forward(ctx, a, g):  # type: ignore[override]
        ctx.save_for_backward(a, g)
        return F.gelu(a) * F.gelu(g)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        a, g = ctx.saved_tensors
        return grad_out * F.gelu(g) * _gelu_grad(a), grad_out * F.gelu(a) * _gelu_grad(g)


def gelu_gate(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``gelu(a) * gelu(g)`` (exact GELU) with half the saved activations of plain autograd."""
    return _GeluGate.apply(a, g)
