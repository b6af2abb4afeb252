"""Transformer blocks and levels of AST (paper Sec. 3.1-3.2, Fig. 2; docs/model.md#blocks).

A block is pre-norm residual: ``x + DropPath(attn(LN1(x)))`` (attention blocks only), then
``x + DropPath(ffn(LN2(x)))``. A level is the sequence of blocks at one resolution of the U-shaped
network (an encoder level, the bottleneck, a decoder level). Attention and feed-forward are chosen by
name, so the ablation variants plug in without touching this file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ast_model.nn.attention import build_attention
from ast_model.nn.ffn import build_ffn
from ast_model.nn.windows import shift_attention_mask, window_partition, window_reverse


class DropPath(nn.Module):
    """Stochastic depth per sample, rescaled by ``1 / keep`` (timm semantics); identity in eval.

    Under ``torch.compile`` the keep probability is read from a (non-persistent) 0-d buffer, not the
    Python float: dynamo guards on the value of Python attributes, so per-block floats (every block has
    its own rate) would make each block a separate compilation and exhaust the recompile limit, while a
    buffer is a graph input. Eager mode keeps the float (exact even when a whole-bf16 model has rounded
    the buffer). Only the eval/train switch is a Python branch.
    """

    keep: torch.Tensor  # a 0-d buffer (registered in __init__)

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p
        self.register_buffer("keep", torch.tensor(1.0 - p), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = self.keep if torch.compiler.is_compiling() else 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.6f}"


class TransformerBlock(nn.Module):
    """One AST block on ``(B, H, W, C)`` features.

    Args:
        dim: channels C.
        num_heads: attention heads.
        win_size: window side.
        shift_size: cyclic shift of the windows (0 or ``win_size // 2``).
        mlp_ratio: feed-forward hidden width = ``int(dim * mlp_ratio)``.
        attention: registered attention name, or None for the attention-free encoder blocks.
        ffn: registered feed-forward name.
        drop_path: stochastic depth rate (0 gives an identity).
        qkv_bias, qk_scale, attn_drop, drop: passed to the attention.
        ffn_options: extra keyword arguments of the feed-forward (e.g. FRFN's switches).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        win_size: int = 8,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        attention: str | None = "assa",
        ffn: str = "frfn",
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        drop: float = 0.0,
        ffn_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.win_size, self.shift_size = win_size, shift_size
        if attention is not None:
            self.norm1 = nn.LayerNorm(dim)
            self.attn = build_attention(
                attention,
                dim=dim,
                num_heads=num_heads,
                win_size=win_size,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                attn_drop=attn_drop,
                proj_drop=drop,
            )
        self.has_attention = attention is not None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        # Named `ffn` here; official checkpoints call it `mlp` (ast_model.checkpoint maps the keys).
        self.ffn = build_ffn(ffn, dim=dim, hidden_dim=int(dim * mlp_ratio), **dict(ffn_options or {}))

    @property
    def uses_shift_mask(self) -> bool:
        """Whether this block needs its level's shift mask (a shifted window attention)."""
        return self.has_attention and self.shift_size > 0 and getattr(self.attn, "windowed", True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, C)`` -> same; ``mask`` is this block's ``(nW, N, N)`` shift mask (shifted blocks)."""
        if self.has_attention:
            x = x + self.drop_path(self._attend(self.norm1(x), mask))
        return x + self.drop_path(self.ffn(self.norm2(x)))

    def _attend(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not getattr(self.attn, "windowed", True):
            return self.attn(h)  # a feature-map attention: no windows, so no shift either
        b, hh, ww, c = h.shape
        s, win = self.shift_size, self.win_size
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        out = self.attn(window_partition(h, win), mask if s else None, batch=b)  # (B*nW, N, C)
        out = window_reverse(out, win, hh, ww)  # (B, H, W, C)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out


class Level(nn.Module):
    """The blocks at one resolution: an encoder level, the bottleneck or a decoder level (official
    ``BasicASTLayer``).

    Args:
        dim, num_heads, win_size, mlp_ratio, attention, ffn, qkv_bias, qk_scale, attn_drop, drop,
            ffn_options: per block.
        drop_paths: one stochastic-depth rate per block (its length is the depth).
        shifts: one shift per block (0 or ``win_size // 2``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        drop_paths: Sequence[float],
        shifts: Sequence[int],
        win_size: int = 8,
        mlp_ratio: float = 4.0,
        attention: str | None = "assa",
        ffn: str = "frfn",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        drop: float = 0.0,
        ffn_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.win_size = win_size
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                num_heads,
                win_size,
                shift,
                mlp_ratio,
                attention,
                ffn,
                dp,
                qkv_bias,
                qk_scale,
                attn_drop,
                drop,
                ffn_options,
            )
            for dp, shift in zip(drop_paths, shifts, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> same. The shift mask is built once per forward and shared by the blocks."""
        masks: dict[int, torch.Tensor] = {}
        for blk in self.blocks:
            mask = None
            if blk.uses_shift_mask:
                s = cast(TransformerBlock, blk).shift_size
                if s not in masks:
                    masks[s] = shift_attention_mask(x.shape[1], x.shape[2], self.win_size, s, x.device).to(x.dtype)
                mask = masks[s]
            x = blk(x, mask)
        return x
