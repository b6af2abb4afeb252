"""Feed-forward networks, selected by name (``ffn="frfn"``).

A feed-forward module maps ``(B, H, W, C)`` features to the same shape (spatial ones need H, W).
Ablation variants (Table 8/9 of the paper) register here under their own names.
"""

from __future__ import annotations

from typing import Callable

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


def build_ffn(name: str, **kwargs) -> nn.Module:
    """Instantiate a registered feed-forward by name (``ValueError`` naming the choices otherwise)."""
    try:
        cls = FFNS[name]
    except KeyError:
        raise ValueError(f"unknown feed-forward {name!r}; registered: {sorted(FFNS)}") from None
    return cls(**kwargs)


@register_ffn("frfn")
class FRFN(nn.Module):
    """Feature Refinement Feed-forward Network (official ``FRFN``).

    partial 3x3 conv on the first C/4 channels -> Linear(C, 2*hidden) -> GELU -> split (a, g) ->
    a: depthwise 3x3 conv -> GELU -> ``a * g`` -> Linear(hidden, C). The GELU after ``linear1`` covers
    both halves (docs/model.md#quirk-9).

    Args:
        dim: channels C.
        hidden_dim: hidden width (``int(C * mlp_ratio)``).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.dim, self.hidden_dim = dim, hidden_dim
        self.dim_conv = dim // 4
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim * 2), nn.GELU())
        self.dwconv = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim), nn.GELU()
        )
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))
        self.partial_conv3 = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, 1, bias=False)
        self.impl = "fast"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        if self.impl == "reference":
            return reference.frfn(self, x)
        c4, hid = self.dim_conv, self.hidden_dim
        # Only the first C/4 channels are convolved; a channels-last image view avoids layout copies.
        conv = to_features(self.partial_conv3(to_image(x[..., :c4])))  # (B, H, W, C/4)
        x = torch.cat((conv, x[..., c4:]), dim=-1)  # (B, H, W, C)
        # linear1 as two half-width products: both halves come out contiguous (no split copies).
        w, b = self.linear1[0].weight, self.linear1[0].bias
        fused = _fused_inference_dtype(x)
        if fused is not None:
            return self._fused_forward(x, w, b, fused)
        a = F.linear(x, w[:hid], b[:hid])  # (B, H, W, hidden) pre-activations; GELUs run in the tail
        g = F.linear(x, w[hid:], b[hid:])
        dw, lin2 = self.dwconv[0], self.linear2[0]
        return gated_dw_tail(a, g, dw.weight, dw.bias, lin2.weight, lin2.bias)

    def _fused_forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Inference on CPU: the same math with each GELU fused into the oneDNN linear / conv before it.

        Saves three full passes over the hidden-width tensors (the GELUs run inside the producers'
        kernels); the results equal the unfused ops to float32 rounding (tests compare them). ``dtype``
        is fp32, or bf16 (autocast, or a bf16 model): the oneDNN kernels are not autocast ops, so inputs
        and weights are cast here, as autocast casts them for the unfused ops.
        """
        bhw, hid = x.shape[:-1], self.hidden_dim
        dw, lin2 = self.dwconv[0], self.linear2[0]
        with autocast_off(x):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (B*H*W, C)
            w, b = w.to(dtype), b.to(dtype)
            linear_gelu = torch.ops.mkldnn._linear_pointwise
            ga = linear_gelu(x2, w[:hid], b[:hid], "gelu", [], "none").view(*bhw, hid)  # (B, H, W, hidden)
            gg = linear_gelu(x2, w[hid:], b[hid:], "gelu", [], "none").view(*bhw, hid)
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
