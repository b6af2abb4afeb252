"""Window attentions, selected by name (``attention="assa"``).

An attention module maps windows ``(B*nW, N, C)`` to ``(B*nW, N, C)``; the block around it does the
norm, shift, partition and residual. Ablation variants (Table 4/5/7 of the paper) register here under
their own names and plug into blocks without touching the network code.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ast_model.nn import reference
from ast_model.nn.functional import window_assa
from ast_model.nn.windows import relative_position_index

ATTENTIONS: dict[str, type[nn.Module]] = {}


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an attention module available to blocks as ``attention=name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ATTENTIONS:
            raise ValueError(f"attention {name!r} is already registered")
        ATTENTIONS[name] = cls
        return cls

    return deco


def build_attention(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered attention by name (``ValueError`` naming the choices otherwise)."""
    try:
        cls = ATTENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; registered: {sorted(ATTENTIONS)}") from None
    return cls(**kwargs)


class LinearProjection(nn.Module):
    """Official ``token_projection='linear'``: separate ``to_q`` and ``to_kv`` linears."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)


@register_attention("assa")
class WindowASSA(nn.Module):
    """Adaptive Sparse Self-Attention in ``win x win`` windows (official ``WindowAttention_sparse``).

    Two branches on the same biased (and masked) scores S: dense ``softmax(S)`` and sparse
    ``relu(S)**2`` (unnormalised), mixed by ``softmax(w)`` with ``w`` initialised to ones (0.5 / 0.5).

    Args:
        dim: channels C; heads split it head-major into ``num_heads`` x ``C // num_heads``.
        num_heads: attention heads h.
        win_size: window side (8 in both variants).
        qkv_bias: bias in the q/kv projections.
        qk_scale: score scale; ``None`` means ``head_dim ** -0.5``.
        attn_drop: dropout on the mixed attention matrix (0 in the paper; > 0 uses the reference path).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        win_size: int = 8,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.win_size = dim, num_heads, win_size
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(win_size), persistent=True)
        self.qkv = LinearProjection(dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.w = nn.Parameter(torch.ones(2))
        self.impl = "fast"
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self) -> torch.Tensor:
        """The ``(h, N, N)`` relative position bias gathered from the table."""
        n = self.win_size * self.win_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(n, n, -1).permute(2, 0, 1)  # (h, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """Attend inside each window.

        Args:
            x: ``(B*nW, N, C)`` windows, batch-major.
            mask: ``(nW, N, N)`` additive shift mask, or None.
            batch: B (to separate batch and window axes of ``x``).

        Returns:
            ``(B*nW, N, C)``.
        """
        if self.impl == "reference" or (self.training and self.attn_drop.p > 0):
            return reference.window_assa(self, x, mask)
        bw, n, c = x.shape
        h, d = self.num_heads, self.head_dim
        nw = bw // batch
        q = F.linear(x, self.qkv.to_q.weight, self.qkv.to_q.bias) * self.scale
        kv = F.linear(x, self.qkv.to_kv.weight, self.qkv.to_kv.bias)
        q = q.view(batch, nw, n, h, d).transpose(2, 3)  # (B, nW, h, N, d)
        k, v = kv.view(batch, nw, n, 2, h, d).permute(3, 0, 1, 4, 2, 5)  # 2 x (B, nW, h, N, d)
        bias = self.relative_bias()  # (h, N, N)
        if mask is not None:
            bias = bias + mask.view(nw, 1, n, n)  # (nW, h, N, N): one add per block instead of one per score
        out = window_assa(q, k, v, bias, torch.softmax(self.w, dim=0))
        out = out.transpose(2, 3).reshape(bw, n, c)  # (B*nW, N, C), heads merged head-major
        return self.proj_drop(self.proj(out))
