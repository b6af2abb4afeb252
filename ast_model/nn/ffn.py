"""Feed-forward networks, selected by name (``ASTConfig.ffn``; default ``"frfn"``).

A feed-forward module maps ``(B, H, W, C)`` features to the same shape (spatial ones need H, W) and is
built as ``cls(dim=C, hidden_dim=int(C * mlp_ratio), **options)``. Besides FRFN (and its three
switches, the paper's Table 9) the ablation variants of the paper's Table 8 register here: FFN, DFN,
GDFN, LeFF. ``docs/ablations.md`` lists them with their sources and equations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ast_model.nn import reference
from ast_model.nn.functional import autocast_off, compute_dtype, gated_dw_tail
from ast_model.nn.windows import to_features, to_image

FFNS: dict[str, type[nn.Module]] = {}


def register_ffn(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a feed-forward module available to blocks as ``ffn=name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in FFNS:
            raise ValueError(f"feed-forward {name!r} is already registered")
        FFNS[name] = cls
        return cls

    return deco


def build_ffn(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered feed-forward by name (``ValueError`` naming the choices otherwise)."""
    try:
        cls = FFNS[name]
    except KeyError:
        raise ValueError(f"unknown feed-forward {name!r}; registered: {sorted(FFNS)}") from None
    return cls(**kwargs)


@register_ffn("frfn")
class FRFN(nn.Module):
    """Feature Refinement Feed-forward Network (paper Sec. 3.2, Eq. 8; official ``FRFN``).

    partial 3x3 conv on the first C/4 channels -> Linear(C, 2*hidden) -> GELU -> split (a, g) ->
    a: depthwise 3x3 conv -> GELU -> ``a * g`` -> Linear(hidden, C). The GELU after ``linear1`` covers
    both halves (docs/model.md#quirk-9; Eq. 8 writes a GELU after W_2 instead, which the code does not have).

    The three switches are the rows of the paper's Table 9 ((d) is all three on, the default):

    - ``enhance``: the partial convolution (PConv of FasterNet, Chen et al., CVPR 2023, the paper's [5]);
      off: ``linear1`` sees the features unchanged.
    - ``ease``: the gate; off: no split, the whole ``2*hidden`` output of ``linear1`` goes through the
      depthwise conv into ``linear2`` (``Linear(2*hidden, C)``).
    - ``dwconv``: the depthwise 3x3 conv (+ GELU) (MobileNets, Howard et al. 2017, the paper's [22]).

    Args:
        dim: channels C.
        hidden_dim: hidden width (``int(C * mlp_ratio)``).
        enhance, ease, dwconv: the switches above (all True = the official FRFN, fast path).
    """

    def __init__(self, dim: int, hidden_dim: int, enhance: bool = True, ease: bool = True, dwconv: bool = True) -> None:
        super().__init__()
        self.dim, self.hidden_dim = dim, hidden_dim
        self.enhance, self.ease, self.use_dwconv = enhance, ease, dwconv
        self.dim_conv = dim // 4
        inner = hidden_dim if ease else 2 * hidden_dim  # width after the (optional) gate
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim * 2), nn.GELU())
        if dwconv:
            self.dwconv = nn.Sequential(nn.Conv2d(inner, inner, 3, 1, 1, groups=inner), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(inner, dim))
        if enhance:
            self.partial_conv3 = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, 1, bias=False)
        self.impl = "fast"

    def extra_repr(self) -> str:
        return f"enhance={self.enhance}, ease={self.ease}, dwconv={self.use_dwconv}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        if self.impl == "reference" or not (self.enhance and self.ease and self.use_dwconv):
            return reference.frfn(self, x)
        c4, hid = self.dim_conv, self.hidden_dim
        # Only the first C/4 channels are convolved; a channels-last image view avoids layout copies.
        conv = to_features(self.partial_conv3(to_image(x[..., :c4])))  # (B, H, W, C/4)
        x = torch.cat((conv, x[..., c4:]), dim=-1)  # (B, H, W, C)
        # linear1 as two half-width products: both halves come out contiguous (no split copies).
        lin1 = cast(nn.Linear, self.linear1[0])
        w, b = lin1.weight, lin1.bias
        fused = _fused_inference_dtype(x)
        if fused is not None:
            return self._fused_forward(x, w, b, fused)
        a = F.linear(x, w[:hid], b[:hid])  # (B, H, W, hidden) pre-activations; GELUs run in the tail
        g = F.linear(x, w[hid:], b[hid:])
        dw, lin2 = cast(nn.Conv2d, self.dwconv[0]), cast(nn.Linear, self.linear2[0])
        assert dw.bias is not None  # built with bias=True (the official FRFN)
        return gated_dw_tail(a, g, dw.weight, dw.bias, lin2.weight, lin2.bias)

    def _fused_forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Inference on CPU: the same math with each GELU fused into the oneDNN linear / conv before it.

        Saves three full passes over the hidden-width tensors (the GELUs run inside the producers'
        kernels); the results equal the unfused ops to float32 rounding (tests compare them). ``dtype``
        is fp32, or bf16 (autocast, or a bf16 model): the oneDNN kernels are not autocast ops, so inputs
        and weights are cast here, as autocast casts them for the unfused ops.
        """
        bhw, hid = x.shape[:-1], self.hidden_dim
        dw, lin2 = cast(nn.Conv2d, self.dwconv[0]), cast(nn.Linear, self.linear2[0])
        with autocast_off(x):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (B*H*W, C)
            w, b = w.to(dtype), b.to(dtype)
            linear_gelu = torch.ops.mkldnn._linear_pointwise
            ga = linear_gelu(x2, w[:hid], b[:hid], "gelu", [], "none").view(*bhw, hid)  # (B, H, W, hidden)
            gg = linear_gelu(x2, w[hid:], b[hid:], "gelu", [], "none").view(*bhw, hid)
            assert dw.bias is not None  # built with bias=True (the official FRFN)
            gd = torch.ops.mkldnn._convolution_pointwise(
                to_image(ga), dw.weight.to(dtype), dw.bias.to(dtype), [1, 1], [1, 1], [1, 1], hid, "gelu", [], "none"
            )  # channels-last (B, hidden, H, W)
            return F.linear(to_features(gd).mul_(gg), lin2.weight.to(dtype), lin2.bias.to(dtype))


def _fused_inference_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype of the oneDNN fused-GELU inference path, or None where it does not apply.

    It applies without autograd, in eager mode (under ``torch.compile`` inductor fuses the GELUs
    itself), on a CPU with oneDNN, when the FRFN computes in fp32 or bf16 (autocast's dtype, else x's).
    """
    if torch.is_grad_enabled() or x.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    dtype = compute_dtype(x)
    return dtype if dtype in (torch.float32, torch.bfloat16) else None


def _dwconv_features(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A (depthwise) conv on ``(B, H, W, C)`` features through a channels-last image view."""
    return to_features(conv(to_image(x).contiguous(memory_format=torch.channels_last)))


# Width of FFN, DFN and LeFF: with ``2 * hidden_dim`` (8C, the width of FRFN's linear1) the AST-T
# variants have the 7.77 M / 7.92 M / 7.92 M parameters of the paper's Table 8; with ``hidden_dim`` (4C,
# the official code's ``Mlp`` / ``LeFF``) they would have 4.97 M / 5.05 M / 5.05 M.
_TABLE8_WIDTH = 2


@register_ffn("ffn")
class FFN(nn.Module):
    """The Transformer MLP: ``Linear(C, W) -> GELU -> Linear(W, C)`` with W = ``2 * hidden_dim``.

    Source: ViT (Dosovitskiy et al., ICLR 2021, the paper's [11]), Eq. 3 ("MLP ... two layers with a GELU
    non-linearity"); Table 8 "FFN".
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        width = _TABLE8_WIDTH * hidden_dim
        self.fc1 = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        return self.fc2(self.act(self.fc1(x)))


@register_ffn("dfn")
class DFN(nn.Module):
    """Locality feed-forward: ``1x1 conv -> h-swish -> depthwise 3x3 conv -> h-swish -> 1x1 conv``.

    Source: LocalViT (Li et al., arXiv:2104.05707, 2021, the paper's [34]), Sec. 3 / Eq. 5-6, with the
    h-swish of its code; W = ``2 * hidden_dim``. Its code's BatchNorm after each conv (and the optional
    SE) are left out: the paper's Table 8 gives DFN the same 7.92 M as LeFF, which BatchNorms would
    exceed (7.96 M). Table 8 "DFN".
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        width = _TABLE8_WIDTH * hidden_dim
        self.conv1 = nn.Linear(dim, width)  # a 1x1 conv on (B, H, W, C) features
        self.dwconv = nn.Conv2d(width, width, 3, 1, 1, groups=width)
        self.conv2 = nn.Linear(width, dim)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        y = self.act(self.conv1(x))  # (B, H, W, W')
        y = self.act(_dwconv_features(self.dwconv, y))
        return self.conv2(y)


@register_ffn("gdfn")
class GDFN(nn.Module):
    """Gated-Dconv feed-forward: ``1x1 conv (C -> 2h) -> depthwise 3x3 -> GELU(x1) * x2 -> 1x1 conv (h -> C)``.

    Source: Restormer (Zamir et al., CVPR 2022, the paper's [100]), Sec. 3.2 / Eq. 3, without biases as
    in its code; the hidden width h is ``hidden_dim`` (4C, not Restormer's 2.66C), with which the AST-T
    variant has the 6.49 M parameters of the paper's Table 8. Table 8 "GDFN".
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(dim, hidden_dim * 2, bias=False)
        self.dwconv = nn.Conv2d(hidden_dim * 2, hidden_dim * 2, 3, 1, 1, groups=hidden_dim * 2, bias=False)
        self.project_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        x1, x2 = _dwconv_features(self.dwconv, self.project_in(x)).chunk(2, dim=-1)  # 2 x (B, H, W, h)
        return self.project_out(F.gelu(x1) * x2)


@register_ffn("leff")
class LeFF(nn.Module):
    """Locally-enhanced feed-forward: ``Linear -> GELU -> depthwise 3x3 conv -> GELU -> Linear``.

    Source: Uformer (Wang et al., CVPR 2022, the paper's [82]), Sec. 3.1 (LeFF, Fig. 2c); W =
    ``2 * hidden_dim``. Table 8 "LeFF".
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        width = _TABLE8_WIDTH * hidden_dim
        self.linear1 = nn.Sequential(nn.Linear(dim, width), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width), nn.GELU())
        self.linear2 = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        return self.linear2(_dwconv_features(self.dwconv, self.linear1(x)))
