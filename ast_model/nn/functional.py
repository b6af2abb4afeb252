"""Memory-lean autograd functions for the hot spots of AST training.

Both compute exactly the official math; they only change what autograd keeps for the backward pass
(recomputing cheap element-wise results instead of storing them). The plain, spec-literal versions live
in :mod:`ast_model.nn.reference`; tests compare the two forward and backward.

Mixed precision. Autocast does not reach inside an autograd function's ``backward`` (it runs after the
``with torch.autocast(...)`` block has closed), and the hand-written backward calls aten ops that autocast
would not cast anyway. So both functions pin their dtypes themselves: they read the autocast state once in
``forward`` (:func:`compute_dtype`), switch autocast off inside, cast explicitly, and their ``backward``
replays the same dtypes. The casts mirror what autocast and type promotion do on the reference path:

- matmuls and convolutions run in the autocast dtype (bf16 / fp16), weights cast to it;
- the attention's ``N x N`` element-wise part (bias add, softmax, squared ReLU, mix) runs in
  ``promote(matmul dtype, bias dtype)``: fp32 under autocast (the bias table is an fp32 parameter, as
  ``scores + bias`` promotes on the reference path), the model dtype when the whole model is bf16;
- gradients come back in the dtype of each input (fp32 for fp32 parameters).

Without autocast every cast is a no-op and the fp32 arithmetic is unchanged.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

_AUTOCASTABLE = (torch.float32, torch.float16, torch.bfloat16)
# Device types with an autocast mode. A constant, not torch.amp.is_autocast_available(): Dynamo in torch
# 2.11 cannot trace that call inside an autograd.Function, so every compiled fast-path graph failed on a
# GPU (seen on an H200); torch.is_autocast_enabled(device_type) traces.
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul on ``x`` in: the autocast dtype when autocast is on for
    ``x``'s device and ``x`` is an autocast-eligible float, else ``x.dtype`` (fp64 is never cast)."""
    dev = x.device.type
    if x.dtype in _AUTOCASTABLE and dev in _AUTOCAST_DEVICES and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``x``'s device (a no-op context when it is off already)."""
    dev = x.device.type
    if dev in _AUTOCAST_DEVICES and torch.is_autocast_enabled(dev):
        return torch.autocast(dev, enabled=False)
    return contextlib.nullcontext()


def _scalar_weights(w: torch.Tensor) -> bool:
    """Whether the branch weights may be read as Python floats (so the mix passes run in place).

    Only in eager mode on the CPU: there ``tolist`` costs nothing, while on an accelerator it is a host
    sync per call, and under ``torch.compile`` a graph break. Meta tensors (shape-only runs) have no values.
    """
    return w.device.type == "cpu" and not torch.compiler.is_compiling()


def _mix(p: torch.Tensor, r: torch.Tensor, w: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``w0 p + w1 r^2`` (both ``(B, nW, h, N, N)``), overwriting ``p`` when ``inplace``; ``r`` is kept."""
    if _scalar_weights(w):
        w0, w1 = w.tolist()  # two scalars; plain floats let addcmul_ fold the second branch in one pass
        return (p.mul_(w0) if inplace else p * w0).addcmul_(r, r, value=w1)
    w = w.to(p.dtype)
    return (p.mul_(w[0]) if inplace else p * w[0]).addcmul_(r, r * w[1])


def _scores(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``S = q k^T + bias`` in ``promote(q.dtype, bias.dtype)``; ``q k^T`` runs in q's dtype.

    Same dtypes: the bias is added in place. Mixed (autocast): one promoting add writes the fp32 scores
    (a cast and then an add would be two passes over the N x N tensor).
    """
    qk = q @ k.transpose(-2, -1)  # (B, nW, h, N, N)
    if qk.dtype == torch.promote_types(qk.dtype, bias.dtype):
        return qk.add_(bias)  # bias (+ shift mask), broadcast over batch (and windows)
    return torch.add(qk, bias)


def _mixed_attention(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, keep_parts: bool):
    """``A = w0 softmax(S) + w1 relu(S)^2`` with ``S = q k^T + bias``, computed with in-place passes.

    ``q k^T`` runs in ``q``'s dtype; ``S`` and ``A`` are in ``promote(q.dtype, bias.dtype)`` (see the
    module docstring). Returns ``(A, P, R)``: ``P = softmax(S)`` and ``R = relu(S)`` are only
    materialised (for the backward pass) when ``keep_parts``; the forward pass needs two N x N buffers
    instead of five.
    """
    s = _scores(q, k, bias)  # (B, nW, h, N, N)
    p = torch.softmax(s, dim=-1)
    r = torch.relu_(s)
    if keep_parts or w.is_meta:  # meta tensors (shape-only runs, e.g. count_macs) have no values
        return p * w[0] + (r * r) * w[1], p, r
    return _mix(p, r, w, inplace=True), None, None


class _AdaptiveSparseAttention(torch.autograd.Function):
    """``out = (w0 softmax(S) + w1 relu(S)^2) v`` with ``S = q k^T + bias``, per window.

    Saves only q, k, v (each N x d per head) and recomputes the N x N scores in the backward pass, so
    no ``(B, nW, h, N, N)`` tensor is kept between forward and backward (flash-attention style; here
    N = 64, so recomputing one ``q k^T`` costs little next to the three N x N tensors autograd would keep).
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, w):
        mm = compute_dtype(q)
        with autocast_off(q):
            q_, k_, v_ = q.to(mm), k.to(mm), v.to(mm)  # (B, nW, h, N, d), the autocast dtype
            a, _, _ = _mixed_attention(q_, k_, bias, w, keep_parts=False)
            out = a.to(mm) @ v_  # (B, nW, h, N, d)
        ctx.save_for_backward(q_, k_, v_, bias, w)
        ctx.in_dtypes = (q.dtype, k.dtype, v.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, w = ctx.saved_tensors
        mm, acc = q.dtype, torch.promote_types(q.dtype, bias.dtype)
        with autocast_off(q):
            s = _scores(q, k, bias)  # (B, nW, h, N, N), recomputed
            p = torch.softmax(s, dim=-1)
            r = torch.relu_(s)
            a = _mix(p, r, w, inplace=False)
            g = grad_out.to(mm)
            grad_v = a.to(mm).transpose(-2, -1) @ g
            del a
            grad_a = g @ v.transpose(-2, -1)  # (B, nW, h, N, N), in mm
            gp = grad_a * p  # promotes to acc under autocast (p is in acc)
            if grad_a.dtype == acc:
                gr = grad_a.mul_(r)  # grad_a * relu(S), in place: grad_a is not needed any more
            else:
                gr = grad_a * r
            del grad_a
            grad_w = None
            if ctx.needs_input_grad[4]:
                grad_w = torch.stack((gp.sum(), torch.vdot(gr.reshape(-1), r.reshape(-1)))).to(w.dtype)
            # softmax backward: p * (g - sum(g * p)); relu(S)^2 backward: 2 relu(S) g.
            grad_s = gp.sub_(p * gp.sum(-1, keepdim=True))
            if _scalar_weights(w):
                w0, w1 = w.tolist()
                grad_s.mul_(w0).add_(gr, alpha=2 * w1)
            else:
                wa = w.to(acc)
                grad_s.mul_(wa[0]).add_(gr.mul_(2 * wa[1]))
            del gp, gr, p, r
            grad_bias = None
            if ctx.needs_input_grad[3]:
                grad_bias = grad_s.sum(dim=tuple(range(grad_s.dim() - bias.dim()))).to(bias.dtype)
            grad_s = grad_s.to(mm)  # the q k^T product ran in mm: its gradient products do too
            grad_q = grad_s @ k
            grad_k = grad_s.transpose(-2, -1) @ q
        dq, dk, dv = ctx.in_dtypes
        return grad_q.to(dq), grad_k.to(dk), grad_v.to(dv), grad_bias, grad_w


def adaptive_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """The ASSA core ``(w0 softmax(S) + w1 relu(S)^2) v`` (paper Eq. 6) on per-window q, k, v.

    Memory-lean autograd, autocast-aware; the whole module (projections, bias gathering) is
    :class:`ast_model.nn.attention.WindowASSA`.

    Args:
        q, k, v: ``(B, nW, h, N, d)``; q already scaled by ``d**-0.5``.
        bias: relative position bias ``(h, N, N)``, or bias plus shift mask ``(nW, h, N, N)``
            (its gradient is the gradient of both: the mask is a constant).
        w: ``(2,)`` branch weights, already softmax-normalised.

    Returns:
        ``(B, nW, h, N, d)`` in the matmul dtype (the autocast dtype under autocast, else q's dtype).
    """
    if _chunked_inference(q, k, v, bias, w):
        return _attention_in_window_chunks(q, k, v, bias, w)
    return _AdaptiveSparseAttention.apply(q, k, v, bias, w)


# Bytes of one N x N score buffer per chunk of windows in CPU inference: small enough to stay in a core's
# L2 cache between the passes over it (scores, softmax, relu, mix, product with v).
_CHUNK_BYTES = 2 << 20


def _chunked_inference(*tensors: torch.Tensor) -> bool:
    """CPU inference in eager mode: no autograd graph to keep, so the windows can go chunk by chunk."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return not needs_grad and tensors[0].device.type == "cpu" and not torch.compiler.is_compiling()


def _attention_in_window_chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """:class:`_AdaptiveSparseAttention`'s forward pass, a chunk of windows at a time.

    Windows are independent, so the result is the same; but the whole-image ``(B, nW, h, N, N)`` scores
    (AST-T on a 384 px tile: 2304 windows, ~38 MB per buffer, two alive at once, per block) shrink to a
    couple of MB that stay in cache, which makes the memory-bound element-wise passes faster and keeps
    the peak memory of a forward pass (and of every extra ``ast-restore`` worker) down.
    """
    mm = compute_dtype(q)
    b, nw, h, n, _ = q.shape
    acc = torch.promote_types(mm, bias.dtype)
    step = max(1, _CHUNK_BYTES // (b * h * n * n * acc.itemsize))
    with autocast_off(q):
        q_, k_, v_ = q.to(mm), k.to(mm), v.to(mm)  # (B, nW, h, N, d)
        out = torch.empty_like(v_)
        for i in range(0, nw, step):
            part = slice(i, i + step)
            chunk_bias = bias[part] if bias.dim() == 4 else bias  # (nW, h, N, N) shift mask: per window
            a, _, _ = _mixed_attention(q_[:, part], k_[:, part], chunk_bias, w, keep_parts=False)
            torch.matmul(a.to(mm), v_[:, part], out=out[:, part])
    return out


class _GatedDWTail(torch.autograd.Function):
    """The FRFN tail ``linear2(gelu(dwconv(gelu(a))) * gelu(g))`` on ``(B, H, W, hidden)`` features.

    Plain autograd keeps five hidden-width tensors per FRFN (``gelu`` input and output, the dwconv
    output, the two gate factors, the product); this keeps only the two pre-activations ``a`` and ``g``
    and recomputes the rest in the backward pass: element-wise GELUs and one depthwise 3x3 convolution
    (9 MACs per element), no extra matmul. Under autocast everything runs in the autocast dtype, as the
    reference path's ops do (its GELUs see the low-precision outputs of linear1 and the conv).
    """

    @staticmethod
    def forward(ctx, a, g, dw_weight, dw_bias, w2, b2):
        mm = compute_dtype(a)
        ctx.in_dtypes = tuple(t.dtype for t in (a, g, dw_weight, dw_bias, w2, b2))
        with autocast_off(a):
            a, g, dw_weight, dw_bias, w2, b2 = (t.to(mm) for t in (a, g, dw_weight, dw_bias, w2, b2))
            d = _dwconv(F.gelu(a), dw_weight, dw_bias)  # (B, H, W, hidden)
            out = F.linear(F.gelu(d).mul_(F.gelu(g)), w2, b2)
        ctx.save_for_backward(a, g, dw_weight, dw_bias, w2)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        a, g, dw_weight, dw_bias, w2 = ctx.saved_tensors
        with autocast_off(a):
            grad_out = grad_out.to(a.dtype)
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
                grad_d.permute(0, 3, 1, 2),
                ga.permute(0, 3, 1, 2),
                dw_weight,
                [dw_weight.shape[0]],
                [1, 1],
                [1, 1],
                [1, 1],
                False,
                [0, 0],
                dw_weight.shape[0],
                [True, True, True],
            )
            del grad_d, ga
            grad_a = torch.ops.aten.gelu_backward(grad_ga.permute(0, 2, 3, 1), a)
        grads = (grad_a, grad_g, grad_dw_w, grad_dw_b, grad_w2, grad_b2)
        return tuple(t.to(dt) for t, dt in zip(grads, ctx.in_dtypes, strict=True))


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
        ``(B, H, W, C)`` in the autocast dtype under autocast, else ``a``'s dtype.
    """
    return _GatedDWTail.apply(a, g, dw_weight, dw_bias, w2, b2)
