"""Multiply-accumulate counting with torch's own flop counter (the paper reports MACs as "FLOPs")."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 256, 256)) -> int:
    """MACs of one forward pass: ``FlopCounterMode`` FLOPs / 2.

    Counts convolutions, linear layers and matmuls (element-wise ops are not counted), which is the
    convention behind the paper's "FLOPs" (Sec. 4.5: counted at a 256x256 input; docs/model.md#cost):
    AST-T = 13.44 G and AST-B = 109.83 G at 1x3x256x256 (the paper's 13.35 G for AST-T is 0.7 % lower: its
    counter differs in what it counts, see docs/ablations.md).

    Args:
        model: any module. A copy on the ``meta`` device is run (eval mode, ``no_grad``): shapes only,
            no arithmetic and no memory, so AST-B at 256x256 is counted in well under a second.
        input_shape: the input tensor shape.

    Returns:
        The number of multiply-accumulates.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(tuple(input_shape), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Number of parameters (the paper's "Params"; buffers such as the relative position index excluded)."""
    return sum(p.numel() for p in model.parameters())
