"""Feature-map attentions for the ablations of the paper's Tables 4 and 5 (not windowed, no shift).

Each maps ``(B, H, W, C)`` features to ``(B, H, W, C)`` and takes the keyword arguments of the window
attentions (:mod:`ast_model.nn.attention`), using ``dim``, ``num_heads`` and ``qkv_bias``. The
projections use ``qkv_bias`` for their biases (the official AST default is True; with it the top-k
model has the 6.67 M parameters of the paper's Table 4).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ast_model.nn.attention import register_attention
from ast_model.nn.windows import to_features, to_image


@register_attention("channel_softmax", selection="softmax")
@register_attention("channel_relu2", selection="relu2")
@register_attention("topk", selection="topk")
class ChannelAttention(nn.Module):
    """Transposed (channel) self-attention: a ``C/h x C/h`` attention per head over all pixels.

    Source: Restormer's MDTA (Zamir et al., CVPR 2022, the paper's [100]), Sec. 3.1 / Eq. 2:
    ``q, k, v = DWConv3x3(Conv1x1(x))``, q and k L2-normalised over the pixels,
    ``A = f(q k^T * t)`` with a learnable temperature t per head, output ``Conv1x1(A v)``.

    ``selection`` picks f:

    - ``"softmax"``: MDTA itself (Table 5, "standard channel SA").
    - ``"relu2"``: ``relu(.)**2``, unnormalised, as the paper's SSA (Eq. 5) (Table 5, "sparse channel SA").
    - ``"topk"``: DRSformer's top-k sparse attention TKSA (Chen et al., CVPR 2023, the paper's [8]),
      Sec. 3.2: for k = C'/2, 2C'/3, 3C'/4, 4C'/5 of the C' = C/h scores of each row, softmax over the
      k largest (the rest -inf), ``out = sum_i a_i (A_i v)`` with learnable scalars a_i (init 0.2)
      (Table 4, "Top-k SA").

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        qkv_bias: bias of the three 1x1 / depthwise convolutions.
        attn_drop: dropout on the attention matrix.
        proj_drop: dropout after the output projection.
        selection: ``"softmax"``, ``"relu2"`` or ``"topk"``.
        **_: the window-attention arguments this module does not use (``win_size``, ``qk_scale``).
    """

    windowed = False
    SELECTIONS = ("softmax", "relu2", "topk")
    TOPK_FRACTIONS = (1 / 2, 2 / 3, 3 / 4, 4 / 5)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        selection: str = "softmax",
        **_: Any,
    ) -> None:
        super().__init__()
        if selection not in self.SELECTIONS:
            raise ValueError(f"selection {selection!r} is not one of {self.SELECTIONS}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.selection = num_heads, selection
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=qkv_bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        if selection == "topk":
            self.topk_weights = nn.Parameter(torch.full((len(self.TOPK_FRACTIONS),), 0.2))

    def attention_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """Scores ``q k^T * t`` ``(B, h, C/h, C/h)`` of ``(B, H, W, C)`` features, before f."""
        return self._qkv_scores(x)[0]

    def _qkv_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, hh, ww, c = x.shape
        qkv = self.qkv_dwconv(self.qkv(to_image(x)))  # (B, 3C, H, W)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, hh * ww) for t in qkv.chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # (B, h, C/h, HW), unit rows
        return (q @ k.transpose(-2, -1)) * self.temperature, v  # (B, h, C/h, C/h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        b, hh, ww, c = x.shape
        attn, v = self._qkv_scores(x)
        if self.selection == "softmax":
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        elif self.selection == "relu2":
            out = self.attn_drop(torch.relu(attn) ** 2) @ v
        else:
            n = attn.shape[-1]
            out = 0
            for weight, frac in zip(self.topk_weights, self.TOPK_FRACTIONS, strict=True):
                index = torch.topk(attn, k=max(1, int(n * frac)), dim=-1).indices
                keep = torch.zeros_like(attn, dtype=torch.bool).scatter_(-1, index, True)
                a = attn.masked_fill(~keep, float("-inf")).softmax(dim=-1)
                out = out + (self.attn_drop(a) @ v) * weight
        out = out.reshape(b, c, hh, ww)  # (B, C, H, W), heads merged head-major
        return self.proj_drop(to_features(self.project_out(out)))


class _GroupedAttention(nn.Module):
    """CODE's grouped channel / spatial attention in the condensed space (its ``ChannelAttention`` and
    ``SpatialAttention``): grouped 1x1 q/k/v expanding each channel ``expand`` times, heads of
    ``expand * dim / heads`` channels, L2-normalised q and k, a learnable temperature per head, softmax,
    grouped 1x1 fusion back to ``dim`` channels. ``spatial`` attends over pixels, otherwise over channels.
    """

    def __init__(self, dim: int, groups: int, expand: int, spatial: bool) -> None:
        super().__init__()
        self.expand, self.spatial = expand, spatial
        self.num_heads = groups * expand
        self.t = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        self.group_qkv = nn.Conv2d(dim, dim * expand * 3, 1, groups=dim)
        self.group_fus = nn.Conv2d(dim * expand, dim, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        e, h = self.expand, self.num_heads
        qkv = self.group_qkv(x).view(b, c, e * 3, hh, ww).transpose(1, 2)  # (B, 3e, C, H, W)
        q, k, v = (t.reshape(b, h, e * c // h, hh * ww) for t in qkv.chunk(3, dim=1))  # (B, h, c', HW)
        if self.spatial:
            q, k = F.normalize(q, dim=-2), F.normalize(k, dim=-2)
            attn = (q.transpose(-2, -1) @ k) * self.t  # (B, h, HW, HW)
            out = (attn.softmax(dim=-1) @ v.transpose(-2, -1)).transpose(-2, -1)  # (B, h, c', HW)
        else:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            attn = (q @ k.transpose(-2, -1)) * self.t  # (B, h, c', c')
            out = attn.softmax(dim=-1) @ v
        out = out.reshape(b, e, c, hh, ww).transpose(1, 2).reshape(b, c * e, hh, ww)
        return self.group_fus(out)


@register_attention("condensed")
class CondensedAttention(nn.Module):
    """CODE's condensed attention block (Zhao et al., "Comprehensive and Delicate: An Efficient
    Transformer for Image Restoration", CVPR 2023, the paper's [114]), Sec. 3.2: aggregate the features
    into a condensed "superpixel" space (1x1 conv squeezing channels by ``squeezes[0]``, then a grouped
    ``shuffle x shuffle`` stride-``shuffle`` conv), attend there over channels and then over pixels
    (:class:`_GroupedAttention`), and recover (grouped 1x1 conv, pixel shuffle, 1x1 conv).

    The paper does not give the hyper-parameters of its Condensed SA; the defaults are those of CODE's
    block definition (``squeezes=(4, 4), shuffle=4, expan_att_chans=4``). Feature maps must have sides
    divisible by ``shuffle`` (AST pads inputs so that every attention level's side is a multiple of 8).

    Args:
        dim: channels C (divisible by ``squeezes[0]``).
        squeezes, shuffle, expand: CODE's ``squeezes``, ``shuffle``, ``expan_att_chans``.
        **_: the window-attention arguments this module does not use.
    """

    windowed = False

    def __init__(
        self, dim: int, squeezes: tuple[int, int] = (4, 4), shuffle: int = 4, expand: int = 4, **_: Any
    ) -> None:
        super().__init__()
        ch = dim // squeezes[0]  # condensed channels
        shuf = ch * shuffle**2
        sp = shuf // squeezes[1]  # channels of the condensed (superpixel) map
        self.ch, self.sp, self.shuffle = ch, sp, shuffle
        self.ch_sp_squeeze = nn.Sequential(nn.Conv2d(dim, ch, 1), nn.Conv2d(ch, sp, shuffle, shuffle, groups=ch))
        self.channel_attention = _GroupedAttention(sp, ch, expand, spatial=False)
        self.spatial_attention = _GroupedAttention(sp, ch, expand, spatial=True)
        self.sp_ch_unsqueeze = nn.Sequential(
            nn.Conv2d(sp, shuf, 1, groups=ch), nn.PixelShuffle(shuffle), nn.Conv2d(ch, dim, 1)
        )
        per = sp // ch
        # CODE interleaves the channel groups between the two attentions (a fixed permutation).
        to_channel = [i + j * ch for i in range(ch) for j in range(per)]
        to_spatial = [i + j * per for i in range(per) for j in range(ch)]
        self.register_buffer("_to_channel", torch.tensor(to_channel), persistent=False)
        self.register_buffer("_to_spatial", torch.tensor(to_spatial), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``; H and W divisible by ``shuffle``."""
        hh, ww = x.shape[1:3]
        if hh % self.shuffle or ww % self.shuffle:
            raise ValueError(f"condensed attention needs sides divisible by {self.shuffle}, got {hh}x{ww}")
        y = self.ch_sp_squeeze(to_image(x))  # (B, sp, H/s, W/s)
        y = self.channel_attention(y[:, self._to_channel])
        y = self.spatial_attention(y[:, self._to_spatial])
        return to_features(self.sp_ch_unsqueeze(y))
