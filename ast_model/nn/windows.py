"""Window and layout helpers shared by every attention block.

Feature maps travel through the network as ``(B, H, W, C)`` tensors: the official "tokens"
``(B, L, C)`` with ``L = H*W`` in row-major order are exactly this memory layout, so reshaping between
the two is free, and a ``(B, H, W, C)`` tensor permuted to ``(B, C, H, W)`` is a channels-last image
that convolutions consume without a copy.
"""

from __future__ import annotations

import torch


def to_image(x: torch.Tensor) -> torch.Tensor:
    """View ``(B, H, W, C)`` features as a ``(B, C, H, W)`` channels-last image (no copy)."""
    return x.permute(0, 3, 1, 2)


def to_features(img: torch.Tensor) -> torch.Tensor:
    """View a ``(B, C, H, W)`` image as ``(B, H, W, C)`` features (no copy if channels-last)."""
    return img.permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, win: int) -> torch.Tensor:
    """Cut ``(B, H, W, C)`` into non-overlapping ``win x win`` windows.

    Windows are ordered batch-major, then window-row, then window-column; tokens inside a window are
    row-major (the official order).

    Returns:
        ``(B * nW, win*win, C)`` with ``nW = (H // win) * (W // win)``.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c)  # (B, Hw, win, Ww, win, C)
    # An unconditional copy (what reshape does here anyway, except when one window spans the whole width):
    # reshape's "is it contiguous already?" test would make an ONNX export specialise on W.
    return x.permute(0, 1, 3, 2, 4, 5).clone(memory_format=torch.contiguous_format).view(-1, win * win, c)


def window_reverse(windows: torch.Tensor, win: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, win*win, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // win) * (w // win))
    x = windows.view(b, h // win, w // win, win, win, c)  # (B, Hw, Ww, win, win, C)
    return x.permute(0, 1, 3, 2, 4, 5).clone(memory_format=torch.contiguous_format).view(b, h, w, c)  # as above


def shift_attention_mask(h: int, w: int, win: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Swin's mask for cyclically shifted windows on an ``h x w`` map.

    The map is labelled with 9 regions (rows ``[0, h-win)``, ``[h-win, h-shift)``, ``[h-shift, h)``,
    columns likewise); inside a window, token pairs from different regions get -100 (the official
    value, not -inf: see docs/model.md#quirk-4; the squared-ReLU branch maps it to 0 only while the raw
    score is below 100) and pairs from the same region 0.

    Returns:
        ``(nW, win*win, win*win)`` float32 mask.
    """
    labels = torch.zeros(h, w, dtype=torch.int64, device=device)
    bounds = ((0, -win), (-win, -shift), (-shift, None))
    for i, (r0, r1) in enumerate(bounds):
        for j, (c0, c1) in enumerate(bounds):
            labels[slice(r0, r1), slice(c0, c1)] = 3 * i + j
    win_labels = window_partition(labels.view(1, h, w, 1), win).squeeze(-1)  # (nW, N)
    differ = win_labels.unsqueeze(1) != win_labels.unsqueeze(2)  # (nW, N, N)
    return differ.float() * -100.0


def relative_position_index(win: int) -> torch.Tensor:
    """Index into the ``(2*win-1)**2``-row relative-position table for every (query, key) pair.

    ``idx = (yi - yj + win - 1) * (2*win - 1) + (xi - xj + win - 1)``.

    Returns:
        ``(win*win, win*win)`` int64.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (win - 1)  # (2, N, N)
    return rel[0] * (2 * win - 1) + rel[1]
