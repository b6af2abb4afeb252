"""Plain, spec-literal forward passes of the two AST hot spots (the reference path).

These follow docs/model.md step by step with ordinary autograd ops. The fast paths in
:mod:`ast_model.nn.attention` and :mod:`ast_model.nn.ffn` must agree with them (tests check forward and
gradients); select them with ``model.set_impl("reference")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ast_model.nn.attention import WindowASSA
    from ast_model.nn.ffn import FRFN


def window_assa(mod: "WindowASSA", x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ASSA on windows ``(B*nW, N, C)`` with the shift mask ``(nW, N, N)`` or None (docs/model.md#assa)."""
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
    dense = torch.softmax(attn, dim=-1)
    sparse = torch.relu(attn) ** 2
    w = torch.exp(mod.w) / torch.sum(torch.exp(mod.w))
    attn = dense * w[0] + sparse * w[1]
    attn = mod.attn_drop(attn)
    out = (attn @ v).transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
    return mod.proj_drop(mod.proj(out))


def frfn(mod: "FRFN", x: torch.Tensor) -> torch.Tensor:
    """FRFN on ``(B, H, W, C)`` features (docs/model.md#frfn), with the official NCHW round trips."""
    b, hh, ww, c = x.shape
    img = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
    x1, x2 = torch.split(img, [mod.dim_conv, c - mod.dim_conv], dim=1)
    img = torch.cat((mod.partial_conv3(x1), x2), dim=1)
    x = img.permute(0, 2, 3, 1)  # (B, H, W, C)
    x = mod.linear1(x)  # Linear + GELU on all 2*hidden channels
    a, g = x.chunk(2, dim=-1)
    a = mod.dwconv(a.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)  # dwconv + GELU
    return mod.linear2(a * g)

