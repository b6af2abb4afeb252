"""Attentions of the AST blocks, selected by name (``ASTConfig.attention``; default ``"assa"``).

Two kinds plug into :class:`ast_model.nn.blocks.TransformerBlock`:

- window attentions (``windowed = True``) map windows ``(B*nW, N, C)`` to ``(B*nW, N, C)``; the block
  does the norm, shift, partition and residual. They share the projections and the relative position
  bias of the paper's Eq. 2-3 (the official ``WindowAttention_sparse`` layout) and differ only in the
  scoring function f of Eq. 3, i.e. in :meth:`WindowAttentionBase.activate`: ASSA (Eq. 6-7, the
  default), softmax (DSA, Eq. 4 = Swin SA), squared ReLU (SSA, Eq. 5), StarReLU, ACON, Meta-ACON
  (the paper's Tables 4-7).
- feature-map attentions (``windowed = False``) map ``(B, H, W, C)`` to ``(B, H, W, C)``: Restormer's
  channel attention and its ReLU^2 version, DRSformer's top-k attention, CODE's condensed attention
  (:mod:`ast_model.nn.channel_attention`, Tables 4 and 5).

Every module is built with the same keyword arguments (``dim, num_heads, win_size, qkv_bias, qk_scale,
attn_drop, proj_drop``); a variant ignores the ones it has no use for. ``docs/ablations.md`` lists the
variants with their sources and equations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ast_model.nn import reference
from ast_model.nn.functional import adaptive_sparse_attention
from ast_model.nn.windows import relative_position_index

ATTENTIONS: dict[str, Callable[..., nn.Module]] = {}


def register_attention(name: str, **preset: Any) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make an attention available to blocks as ``attention=name``.

    ``preset`` keyword arguments are bound to the class for this name (one class, several registered
    variants, e.g. ``activation="softmax"``); decorators stack.
    """

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ATTENTIONS:
            raise ValueError(f"attention {name!r} is already registered")
        ATTENTIONS[name] = functools.partial(cls, **preset) if preset else cls
        return cls

    return deco


def build_attention(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered attention by name (``ValueError`` naming the choices otherwise)."""
    try:
        factory = ATTENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; registered: {sorted(ATTENTIONS)}") from None
    return factory(**kwargs)


class LinearProjection(nn.Module):
    """Official ``token_projection='linear'``: separate ``to_q`` and ``to_kv`` linears."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)


class WindowAttentionBase(nn.Module):
    """Multi-head attention in ``win x win`` windows with a relative position bias (paper Eq. 2-3).

    ``S = (x W_Q)(x W_K)^T / sqrt(d) + B`` (+ the shift mask), ``A = f(S)``, output ``proj(A (x W_V))``.
    Subclasses define f in :meth:`activate`; the projections, the bias table and their initialisation
    (and so the state-dict keys) are those of the official ``WindowAttention_sparse``.

    Args:
        dim: channels C; heads split it head-major into ``num_heads`` x ``C // num_heads``.
        num_heads: attention heads h.
        win_size: window side (8 in both official variants).
        qkv_bias: bias in the q/kv projections.
        qk_scale: score scale; ``None`` means ``head_dim ** -0.5``.
        attn_drop: dropout on the attention matrix (0 in the paper).
        proj_drop: dropout after the output projection.
    """

    relative_position_index: torch.Tensor  # a buffer (registered in __init__)

    windowed = True

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
        self.impl = "fast"
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_bias(self) -> torch.Tensor:
        """The ``(h, N, N)`` relative position bias gathered from the table."""
        n = self.win_size * self.win_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(n, n, -1).permute(2, 0, 1)  # (h, N, N)

    def activate(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The scoring function f of Eq. 3 on biased, masked scores ``(B*nW, h, N, N)``.

        ``mask`` is the additive ``(nW, N, N)`` shift mask already added to ``scores`` (or None); an
        activation that does not map -100 to about 0 uses it to zero the masked pairs.
        """
        raise NotImplementedError

    def attention_matrix(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention matrix ``A = f(S)`` ``(B*nW, h, N, N)`` of windows ``x`` (no dropout; for analysis)."""
        return self.activate(reference.window_scores(self, x, mask)[0], mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """Attend inside each window.

        Args:
            x: ``(B*nW, N, C)`` windows, batch-major.
            mask: ``(nW, N, N)`` additive shift mask, or None.
            batch: B (to separate batch and window axes of ``x``; used by the fast ASSA path).

        Returns:
            ``(B*nW, N, C)``.
        """
        return reference.window_attention(self, x, mask)


def _keep_unmasked(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the pairs the shift mask separates: ``a`` ``(B*nW, h, N, N)``, ``mask`` ``(nW, N, N)``."""
    if mask is None:
        return a
    nw, n = mask.shape[0], mask.shape[-1]
    keep = (mask == 0).to(a.dtype).view(1, nw, 1, n, n)
    return (a.view(-1, nw, a.shape[1], n, n) * keep).view(a.shape)


@register_attention("assa")
class WindowASSA(WindowAttentionBase):
    """Adaptive Sparse Self-Attention (paper Sec. 3.2, Eq. 6-7; docs/model.md#assa).

    Two branches on the same biased (and masked) scores S: dense ``softmax(S)`` (DSA, Eq. 4) and sparse
    ``relu(S)**2`` (SSA, Eq. 5, unnormalised), mixed by ``softmax(w)`` (Eq. 7) with ``w`` initialised to
    ones (0.5 / 0.5). ``w[0]`` weighs the dense branch, ``w[1]`` the sparse one (official order; the
    paper's Eq. 6 writes them the other way round).

    Args: as :class:`WindowAttentionBase`; ``attn_drop > 0`` in training uses the reference path.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.w = nn.Parameter(torch.ones(2))

    def activate(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dense = torch.softmax(scores, dim=-1)
        sparse = torch.relu(scores) ** 2
        w = torch.exp(self.w) / torch.sum(torch.exp(self.w))
        return dense * w[0] + sparse * w[1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        if self.impl == "reference" or (self.training and self.attn_drop.p > 0):
            return reference.window_attention(self, x, mask)
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
        out = adaptive_sparse_attention(q, k, v, bias, torch.softmax(self.w, dim=0))
        out = out.transpose(2, 3).reshape(bw, n, c)  # (B*nW, N, C), heads merged head-major
        return self.proj_drop(self.proj(out))


class StarReLU(nn.Module):
    """StarReLU ``s * relu(x)**2 + b`` with learnable scalars s (init 1) and b (init 0).

    Source: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023 (the paper's [96]), Sec. 3.1 /
    Eq. 5; the initial values are the defaults of its code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias


class ACON(nn.Module):
    """ACON-C ``(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x`` with one (p1, p2, beta) per attention head.

    Source: Ma et al., "Activate or Not: Learning Customized Activation", CVPR 2021 (the paper's [51]),
    Eq. 3 (ACON-C); per-channel parameters there are per head here (the score map's channels),
    initialised as its code does: p1, p2 standard normal, beta ones. With ``meta=True`` it is Meta-ACON
    (Sec. 3.2): beta is generated per window and head by two linears (width ``max(16, h // 16)``, the
    code's ``r = 16``) and a sigmoid from the mean score over the unmasked pairs; the code's
    BatchNorms after those linears are left out (they would mix windows of different images).
    """

    def __init__(self, num_heads: int, meta: bool = False) -> None:
        super().__init__()
        self.p1 = nn.Parameter(torch.randn(num_heads, 1, 1))
        self.p2 = nn.Parameter(torch.randn(num_heads, 1, 1))
        self.meta = meta
        if meta:
            hidden = max(16, num_heads // 16)
            self.fc1 = nn.Linear(num_heads, hidden)
            self.fc2 = nn.Linear(hidden, num_heads)
        else:
            self.beta = nn.Parameter(torch.ones(num_heads, 1, 1))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B*nW, h, N, N)``; ``keep`` broadcastable 0/1 weights of the pairs the mean runs over."""
        if self.meta:
            if keep is None:
                mean = x.mean(dim=(-2, -1))  # (B*nW, h)
            else:
                mean = (x * keep).sum(dim=(-2, -1)) / keep.sum(dim=(-2, -1)).clamp_min(1)
            beta = torch.sigmoid(self.fc2(self.fc1(mean)))[..., None, None]  # (B*nW, h, 1, 1)
        else:
            beta = self.beta
        d = (self.p1 - self.p2) * x
        return d * torch.sigmoid(beta * d) + self.p2 * x


@register_attention("window_softmax", activation="softmax")
@register_attention("window_relu2", activation="relu2")
@register_attention("window_starrelu", activation="starrelu")
@register_attention("window_acon", activation="acon")
@register_attention("window_meta_acon", activation="meta_acon")
class WindowAttention(WindowAttentionBase):
    """Window attention with one scoring function f (paper Eq. 3; Tables 4-7).

    - ``"softmax"``: DSA (Eq. 4), the standard window attention of Swin / SwinIR (Liu et al., ICCV 2021;
      Liang et al., ICCVW 2021, the paper's [46, 37]) and Uformer ([82]); Table 4 "Swin SA", Table 5
      "standard local SA", Table 6 "DSA", Table 7 "softmax".
    - ``"relu2"``: SSA (Eq. 5, from Primer, So et al. 2021, [67]): ``relu(S)**2``, unnormalised, as
      ASSA's sparse branch; Table 5 "sparse local SA", Table 6 "SSA", Table 7 "ReLU^2".
    - ``"starrelu"``, ``"acon"``, ``"meta_acon"``: Table 7 (see :class:`StarReLU`, :class:`ACON`).

    Masking: softmax and ReLU^2 take the official additive -100 shift mask (both map it to about 0);
    StarReLU's bias and ACON's linear part do not, so their masked pairs are set to 0 after f.

    Args: as :class:`WindowAttentionBase`, plus ``activation``.
    """

    ACTIVATIONS = ("softmax", "relu2", "starrelu", "acon", "meta_acon")

    def __init__(self, *args: Any, activation: str = "softmax", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {self.ACTIVATIONS}")
        self.activation = activation
        self.act: nn.Module
        if activation == "starrelu":
            self.act = StarReLU()
        elif activation in ("acon", "meta_acon"):
            self.act = ACON(self.num_heads, meta=activation == "meta_acon")

    def activate(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.activation == "softmax":
            return torch.softmax(scores, dim=-1)
        if self.activation == "relu2":
            return torch.relu(scores) ** 2
        if self.activation == "starrelu":
            return _keep_unmasked(self.act(scores), mask)
        keep = None
        if mask is not None:
            nw, n = mask.shape[0], mask.shape[-1]
            keep = (mask == 0).to(scores.dtype).repeat(scores.shape[0] // nw, 1, 1).view(-1, 1, n, n)
        return _keep_unmasked(self.act(scores, keep), mask)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


# The feature-map attentions register themselves on import; imported last because that module builds on
# the registry above.
from ast_model.nn import channel_attention as _channel_attention  # noqa: E402, F401
