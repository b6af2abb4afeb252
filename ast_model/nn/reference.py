"""Plain forward passes of the window attentions and of FRFN (the reference path).

They follow the official code (docs/model.md) operation by operation with ordinary autograd ops. The fast paths of the
default model (:class:`ast_model.nn.attention.WindowASSA`, :class:`ast_model.nn.ffn.FRFN`) must agree
with them (tests check forward and gradients); select them with ``model.set_impl("reference")``. The
ablation variants of the window attention and of FRFN (its switches) always run here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ast_model.nn.attention import WindowAttentionBase
    from ast_model.nn.ffn import FRFN


def window_scores(
    mod: WindowAttentionBase, x: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased, masked scores ``S`` ``(B*nW, h, N, N)`` (paper Eq. 3) and values ``(B*nW, h, N, d)``.

    Args:
        mod: the window attention (projections, scale, relative bias).
        x: windows ``(B*nW, N, C)``.
        mask: the additive shift mask ``(nW, N, N)``, or None.
    """
    bw, n, c = x.shape
    h = mod.num_heads
    q = mod.qkv.to_q(x).reshape(bw, n, h, c // h).permute(0, 2, 1, 3)  # (B*nW, h, N, d)
    kv = mod.qkv.to_kv(x).reshape(bw, n, 2, h, c // h).permute(2, 0, 3, 1, 4)  # (2, B*nW, h, N, d)
    k, v = kv[0], kv[1]
    q = q * mod.scale
    attn = q @ k.transpose(-2, -1)  # (B*nW, h, N, N)
    attn = attn + mod.relative_bias().unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, h, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, h, n, n)
    return attn, v


def window_attention(mod: WindowAttentionBase, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Window attention ``proj(f(S) v)`` on windows ``(B*nW, N, C)``, f = ``mod.activate``.

    For ASSA f is ``w0 softmax(S) + w1 relu(S)^2`` (paper Eq. 6-7), computed as the official code does.
    """
    bw, n, c = x.shape
    attn, v = window_scores(mod, x, mask)
    attn = mod.activate(attn, mask)
    attn = mod.attn_drop(attn)
    out = (attn @ v).transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
    return mod.proj_drop(mod.proj(out))


def frfn(mod: FRFN, x: torch.Tensor) -> torch.Tensor:
    """FRFN (paper Eq. 8; docs/model.md#frfn) on ``(B, H, W, C)`` features, with the official NCHW round trips.

    The switches of :class:`ast_model.nn.ffn.FRFN` drop the partial conv (``enhance``), the gate
    (``ease``: the whole ``linear1`` output goes through the depthwise conv into ``linear2``) or the
    depthwise conv (``dwconv``).
    """
    c = x.shape[-1]
    if mod.enhance:
        img = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        x1, x2 = torch.split(img, [mod.dim_conv, c - mod.dim_conv], dim=1)
        img = torch.cat((mod.partial_conv3(x1), x2), dim=1)
        x = img.permute(0, 2, 3, 1)  # (B, H, W, C)
    x = mod.linear1(x)  # Linear + GELU on all 2*hidden channels
    if mod.ease:
        a, g = x.chunk(2, dim=-1)
    else:
        a, g = x, None
    if mod.use_dwconv:
        a = mod.dwconv(a.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)  # dwconv + GELU
    return mod.linear2(a * g if g is not None else a)
