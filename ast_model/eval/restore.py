"""Run a restoration model on whole images of any size.

Works with any ``torch.nn.Module`` that maps ``(B, 3, H, W)`` to ``(B, 3, H, W)`` (AST pads itself to its
multiple and crops back, so callers never pad). Three building blocks, composable:

- whole-image inference (one forward pass);
- tiled inference: overlapping tiles, each blended in with a raised-cosine weight that falls towards the
  tile's edges, so tile borders (where a network sees zero padding instead of context) contribute little
  and neighbouring tiles cross-fade without seams; the tile size comes from a memory budget unless given;
- the geometric self-ensemble over the 8 dihedral transforms (rotations x flips; the paper's "+" rows).

The image stays on the CPU; each forward pass moves only its input (a tile or the whole image) to the
model's device. fp32 everywhere; bf16/fp16 autocast on CUDA on request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_BYTES_PER_PIXEL",
    "RestoreOptions",
    "available_memory",
    "dihedral",
    "dihedral_inverse",
    "restore_image",
    "restore_tensor",
    "self_ensemble",
    "tile_forward",
    "tile_size_for_budget",
    "tile_starts",
]

Forward = Callable[[torch.Tensor], torch.Tensor]
Precision = Literal["fp32", "bf16", "fp16"]
Blend = Literal["cosine", "mean"]

# Peak inference memory per input pixel of AST-B in fp32 (activations incl. the 8x8-window attention
# maps of the full-resolution stages): 7.6-11 KB measured as the peak-RSS growth of one CPU forward pass
# at 128-512 px, rounded up. It decides when to tile and how large tiles may be; smaller models
# (AST-T) need less, so it errs towards tiling.
DEFAULT_BYTES_PER_PIXEL = 12_000
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MIN_TILE = 32


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """How to run a model over an image.

    Attributes:
        tile: ``"auto"`` (whole image when it fits ``memory_budget``, otherwise the largest tiles that
            fit), ``None`` or 0 (always whole), or a tile side in pixels.
        overlap: pixels shared by neighbouring tiles (blended); must be smaller than the tile.
        blend: ``"cosine"`` (raised-cosine weights, seamless) or ``"mean"`` (plain average of the
            overlapping tiles: the official AST test scripts, e.g. tile 384 / overlap 80 for AGAN-Data and
            1152 / 384 for Dense-Haze, RECIPES.md sections 3-4).
        ensemble: average the 8 dihedral transforms (8x the compute).
        precision: ``"fp32"``; ``"bf16"``/``"fp16"`` (autocast) only on CUDA.
        memory_budget: bytes a forward pass may use; ``None``: derived from the device's free memory.
        bytes_per_pixel: the model's peak inference memory per input pixel (see
            :data:`DEFAULT_BYTES_PER_PIXEL`).
    """

    tile: int | Literal["auto"] | None = "auto"
    overlap: int = 64
    blend: Blend = "cosine"
    ensemble: bool = False
    precision: Precision = "fp32"
    memory_budget: int | None = None
    bytes_per_pixel: float = DEFAULT_BYTES_PER_PIXEL

    def __post_init__(self) -> None:
        if self.tile != "auto" and self.tile is not None and (not isinstance(self.tile, int) or self.tile < 0):
            raise ValueError(f"tile must be 'auto', None or a non-negative int, got {self.tile!r}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.blend not in ("cosine", "mean"):
            raise ValueError(f"blend must be 'cosine' or 'mean', got {self.blend!r}")
        if self.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {self.precision!r}")


# --------------------------------------------------------------------------------------------------
# Self-ensemble
# --------------------------------------------------------------------------------------------------
def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0-7) of the dihedral group on the last two axes: ``k % 4`` quarter turns, then a
    horizontal flip when ``k >= 4``. ``k = 0`` is the identity."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(y: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``: ``dihedral_inverse(dihedral(x, k), k) == x``."""
    x = y.flip(-1) if k >= 4 else y
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


def self_ensemble(fn: Forward, x: torch.Tensor) -> torch.Tensor:
    """Geometric self-ensemble: the mean of ``inverse_k(fn(transform_k(x)))`` over the 8 transforms.

    Args:
        fn: maps ``(B, C, H, W)`` to ``(B, C', H, W)`` for any H, W (transposed shapes occur).
        x: ``(B, C, H, W)``.

    Returns:
        ``(B, C', H, W)`` float32. Equal to ``fn(x)`` when ``fn`` commutes with rotations and flips.
    """
    total = None
    for k in range(8):
        out = dihedral_inverse(fn(dihedral(x, k)), k).float()
        total = out if total is None else total + out
    return total / 8


# --------------------------------------------------------------------------------------------------
# Tiling
# --------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: stride ``tile - overlap``, the last tile flush
    with the end (so no tile hangs over the border and none is smaller than ``tile``).

    Raises:
        ValueError: ``overlap >= tile`` (the tiling would never advance).
    """
    if length <= tile:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(n: int, overlap: int) -> torch.Tensor:
    """1-D blending weight of length ``n``: 1 inside, a raised-cosine fall over ``overlap`` pixels at
    both ends, never 0 (so image borders covered by one tile only are still defined). Two tiles that
    overlap by exactly ``overlap`` pixels get weights summing to 1 there (cos^2 + sin^2)."""
    i = torch.arange(n, dtype=torch.float64)
    edge = torch.minimum(i + 1, n - i)  # distance to the nearer end, >= 1
    t = torch.clamp(edge / (overlap + 1), max=1.0)
    return torch.sin(t * math.pi / 2).pow(2).float()


def tile_forward(
    fn: Forward, x: torch.Tensor, tile: int, overlap: int, device: torch.device, blend: Blend = "cosine"
) -> torch.Tensor:
    """Run ``fn`` tile by tile and blend the tiles.

    Args:
        fn: maps a ``(B, C, h, w)`` tensor on ``device`` to ``(B, C', h, w)``.
        x: ``(B, C, H, W)`` on any device (typically the CPU).
        tile: tile side; tiles are clipped to the image (a 1x1 image is one 1x1 tile).
        overlap: pixels shared by neighbouring tiles.
        device: where ``fn`` runs.
        blend: ``"cosine"`` (see :func:`_ramp`) or ``"mean"`` (equal weights, the official scripts).

    Returns:
        ``(B, C', H, W)`` float32 on ``x``'s device.
    """
    _, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    if blend == "mean":
        win = torch.ones((th, tw), device=x.device)
    else:
        win = (_ramp(th, overlap)[:, None] * _ramp(tw, overlap)[None, :]).to(x.device)  # (th, tw)
    out = None
    weight = torch.zeros((1, 1, h, w), dtype=torch.float32, device=x.device)
    for top in tile_starts(h, th, min(overlap, th - 1)):
        for left in tile_starts(w, tw, min(overlap, tw - 1)):
            piece = x[..., top : top + th, left : left + tw].to(device)  # (B, C, th, tw)
            y = fn(piece).float().to(x.device)  # (B, C', th, tw)
            if out is None:  # the output channel count is known after the first tile
                out = torch.zeros((*y.shape[:2], h, w), dtype=torch.float32, device=x.device)
            out[..., top : top + th, left : left + tw] += y * win
            weight[..., top : top + th, left : left + tw] += win
    return out / weight


def available_memory(device: torch.device) -> int:
    """Bytes a forward pass may use on ``device``: 80% of the free CUDA memory, or half the available
    RAM (the other half holds the image, the output and the rest of the process); 4 GiB if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):  # not POSIX, or the name is unknown
        return 4 << 30


def tile_size_for_budget(budget: int, bytes_per_pixel: float, multiple: int = 1) -> int:
    """The largest square tile side whose forward pass fits ``budget`` bytes.

    Args:
        budget: bytes available for one forward pass.
        bytes_per_pixel: peak memory per input pixel.
        multiple: round down to a multiple of this (the model's padding multiple: no wasted padding).

    Returns:
        The side, at least ``max(multiple, 32)`` even if that exceeds the budget.
    """
    side = int(math.sqrt(max(budget, 0) / bytes_per_pixel))
    side -= side % max(multiple, 1)
    return max(side, multiple, _MIN_TILE)


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """No autograd, the model in eval(); the caller's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def restore_tensor(
    model: nn.Module,
    x: torch.Tensor,
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Restore a batch: whole or tiled, optionally self-ensembled.

    Args:
        model: maps ``(B, 3, H, W)`` to the same shape; it runs in eval mode without autograd.
        x: ``(B, 3, H, W)`` float in [0, 1], on any device (kept there; tiles travel to ``device``).
        options: how to run (defaults: auto tiling, no ensemble, fp32).
        device: where the model runs; default: the device of its parameters (CPU if it has none).

    Returns:
        ``(B, 3, H, W)`` float32 on ``x``'s device, not clamped.

    Raises:
        ValueError: a wrong input layout, or half precision requested off CUDA.
    """
    opts = options or RestoreOptions()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    dev = torch.device(device) if device is not None else _model_device(model)
    if opts.precision != "fp32" and dev.type != "cuda":
        raise ValueError(f"precision {opts.precision!r} needs a CUDA device (running on {dev}); use fp32")
    x = x.float()

    def forward(t: torch.Tensor) -> torch.Tensor:
        if opts.precision == "fp32":
            return model(t)
        with torch.autocast(device_type="cuda", dtype=_DTYPES[opts.precision]):
            return model(t)

    fn: Forward = (lambda t: self_ensemble(forward, t)) if opts.ensemble else forward
    h, w = x.shape[-2:]
    tile = opts.tile
    if tile == "auto":
        budget = opts.memory_budget if opts.memory_budget is not None else available_memory(dev)
        fits = x.shape[0] * h * w * opts.bytes_per_pixel <= budget
        multiple = int(getattr(model, "pad_multiple", 1))
        tile = None if fits else tile_size_for_budget(budget, opts.bytes_per_pixel, multiple)
    with _eval_mode(model):
        if not tile or (tile >= h and tile >= w):
            return fn(x.to(dev)).float().to(x.device)
        return tile_forward(fn, x, tile, opts.overlap, dev, opts.blend)


def restore_image(
    model: nn.Module,
    image: np.ndarray,
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Restore one image.

    Args:
        model: maps ``(B, 3, H, W)`` to the same shape.
        image: ``(H, W, 3)`` RGB float in [0, 1] (see :func:`ast_model.eval.images.read_image`).
        options: see :class:`RestoreOptions`.
        device: where the model runs; default: its parameters' device.

    Returns:
        ``(H, W, 3)`` float32 in [0, 1] (the output is clamped, as the official test scripts do).

    Raises:
        ValueError: not an ``(H, W, 3)`` float image.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"expected an (H, W, 3) float image in [0, 1], got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    y = restore_tensor(model, x, options, device)  # (1, 3, H, W)
    return y[0].clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)
