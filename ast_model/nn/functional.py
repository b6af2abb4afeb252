"""Memory-lean autograd functions for the hot spots of AST training.

Both compute exactly the official math; they only change what autograd keeps for the backward pass
(recomputing cheap element-wise results instead of storing them). The plain, spec-literal versions live
in :mod:`ast_model.nn.reference`; tests compare the two forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mixed_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, keep_parts: bool):
    """``A = w0 softmax(S) + w1 relu(S)^2`` with ``S = q k^T + bias``, computed with in-place passes.

    Returns ``(A, P, R)``: ``P = softmax(S)`` and ``R = relu(S)`` are only materialised (for the
    backward pass) when ``keep_parts``; the forward pass needs two N x N buffers instead of five.
    """
    s = q @ k.transpose(-2, -1)  # (B, nW, h, N, N)
    s += bias  # bias (+ shift mask), broadcast over batch (and windows)
    p = torch.softmax(s, dim=-1)
    r = torch.relu_(s)
    if keep_parts or w.is_meta:  # meta tensors (shape-only runs, e.g. count_macs) have no values
        return p * w[0] + (r * r) * w[1], p, r
    w0, w1 = w.tolist()  # two scalars; plain floats let the passes below run in place
    return p.mul_(w0).addcmul_(r, r, value=w1), None, None


class _WindowASSA(torch.autograd.Function):
    """``out = (w0 softmax(S) + w1 relu(S)^2) v`` with ``S = q k^T + bias``, per window.

    Saves only q, k, v (each N x d per head) and recomputes the N x N scores in the backward pass, so
    no ``(B, nW, h, N, N)`` tensor is kept between forward and backward (flash-attention style; here
    N = 64, so recomputing one ``q k^T`` costs little next to the three N x N tensors autograd would keep).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, w):  # type: ignore[override]
        a, _, _ = _mixed_attention(q, k, bias, w, keep_parts=False)
        ctx.save_for_backward(q, k, v, bias, w)
        return a @ v  # (B, nW, h, N, d)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, bias, w = ctx.saved_tensors
        s = q @ k.transpose(-2, -1)  # (B, nW, h, N, N), recomputed
        s += bias
        p = torch.softmax(s, dim=-1)
        r = torch.relu_(s)
        w0, w1 = w.tolist()
        a = (p * w0).addcmul_(r, r, value=w1)
        grad_v = a.transpose(-2, -1) @ grad_out
        del a
        grad_a = grad_out @ v.transpose(-2, -1)  # (B, nW, h, N, N)
        gp = grad_a * p
        gr = grad_a.mul_(r)  # grad_a * relu(S), in place: grad_a is not needed any more
        grad_w = None
        if ctx.needs_input_grad[4]:
            grad_w = torch.stack((gp.sum(), torch.vdot(gr.reshape(-1), r.reshape(-1))))
        # softmax backward: p * (g - sum(g * p)); relu(S)^2 backward: 2 relu(S) g.
        grad_s = gp.sub_(p * gp.sum(-1, keepdim=True)).mul_(w0).add_(gr, alpha=2 * w1)
        del gp, gr, p, r
        grad_q = grad_s @ k
        grad_k = grad_s.transpose(-2, -1) @ q
        grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_bias = grad_s.sum(dim=tuple(range(grad_s.dim() - bias.dim())))
        return grad_q, grad_k, grad_v, grad_bias, grad_w


def window_assa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Adaptive sparse self-attention inside windows (memory-lean autograd).

    Args:
        q, k, v: ``(B, nW, h, N, d)``; q already scaled by ``d**-0.5``.
        bias: relative position bias ``(h, N, N)``, or bias plus shift mask ``(nW, h, N, N)``
            (its gradient is the gradient of both: the mask is a constant).
        w: ``(2,)`` branch weights, already softmax-normalised.

    Returns:
        ``(B, nW, h, N, d)``.
    """
    return _WindowASSA.apply(q, k, v, bias, w)


class _GatedDWTail(torch.autograd.Function):
    """The FRFN tail ``linear2(gelu(dwconv(gelu(a))) * gelu(g))`` on ``(B, H, W, hidden)`` features.

    Plain autograd keeps five hidden-width tensors per FRFN (``gelu`` input and output, the dwconv
    output, the two gate factors, the product); this keeps only the two pre-activations ``a`` and ``g``
    and recomputes the rest in the backward pass: element-wise GELUs and one depthwise 3x3 convolution
    (9 MACs per element), no extra matmul.
    """

    @staticmethod
    def forward(ctx, a, g, dw_weight, dw_bias, w2, b2):  # type: ignore[override]
        d = _dwconv(F.gelu(a), dw_weight, dw_bias)  # (B, H, W, hidden)
        out = F.linear(F.gelu(d).mul_(F.gelu(g)), w2, b2)
        ctx.save_for_backward(a, g, dw_weight, dw_bias, w2)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        a, g, dw_weight, dw_bias, w2 = ctx.saved_tensors
        ga = F.gelu(a)
        d = _dwconv(ga, dw_weight, dw_bias)
        gd, gg = F.gelu(d), F.gelu(g)
        grad_y = grad_out @ w2  # (B, H, W, hidden)
        flat_out = grad_out.reshape(-1, grad_out.shape[-1])  # (B*H*W, C)
        grad_w2 = flat_out.t() @ (gd * gg).reshape(-1, gd.shape[-1])
        grad_b2 = flat_out.sum(0)
        # gelu_backward(grad, x) = grad * gelu'(x) in one fused kernel.
        grad_g = torch.ops.aten.gelu_backward(grad_y * gd, g)
        del gd
        grad_d = torch.ops.aten.gelu_backward(grad_y.mul_(gg), d)
        del gg, grad_y, d
        grad_ga, grad_dw_w, grad_dw_b = torch.ops.aten.convolution_backward(
            grad_d.permute(0, 3, 1, 2), ga.permute(0, 3, 1, 2), dw_weight, [dw_weight.shape[0]],
            [1, 1], [1, 1], [1, 1], False, [0, 0], dw_weight.shape[0], [True, True, True],
        )
        del grad_d, ga
        grad_a = torch.ops.aten.gelu_backward(grad_ga.permute(0, 2, 3, 1), a)
        return grad_a, grad_g, grad_dw_w, grad_dw_b, grad_w2, grad_b2


def _dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 conv on ``(B, H, W, C)`` features through a channels-last image view."""
    img = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    return F.conv2d(img, weight, bias, padding=1, groups=weight.shape[0]).permute(0, 2, 3, 1)


def gated_dw_tail(
    a: torch.Tensor, g: torch.Tensor, dw_weight: torch.Tensor, dw_bias: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """FRFN tail: ``linear2(gelu(dwconv(gelu(a))) * gelu(g))`` with exact GELUs (memory-lean autograd).

    Args:
        a, g: ``(B, H, W, hidden)`` pre-activations (the two halves of ``linear1``).
        dw_weight, dw_bias: depthwise conv ``(hidden, 1, 3, 3)``, ``(hidden,)``.
        w2, b2: ``linear2`` ``(C, hidden)``, ``(C,)``.

    Returns:
        ``(B, H, W, C)``.
    """
    return _GatedDWTail.apply(a, g, dw_weight, dw_bias, w2, b2)
