"""Run a restoration model on whole images of any size.

Works with any ``torch.nn.Module`` that maps ``(B, 3, H, W)`` to ``(B, 3, H, W)`` (AST pads itself to its
multiple and crops back, so callers never pad). Three building blocks, composable:

- whole-image inference (one forward pass);
- tiled inference: overlapping tiles, each blended in with a raised-cosine weight that falls towards the
  tile's edges, so tile borders (where a network sees zero padding instead of context) contribute little
  and neighbouring tiles cross-fade without seams; the tile size comes from a memory budget unless given;
- the geometric self-ensemble over the 8 dihedral transforms (rotations x flips; the paper's "+" rows).

The image stays on the CPU; each forward pass moves only its input (a tile or the whole image) to the
model's device. fp32 by default; bf16 autocast on request (CUDA, or a CPU: AVX-512 bf16 / AMX make it
faster there), fp16 autocast on CUDA only.

Memory of a tiled :func:`restore_image` (one ``H x W`` image, tile side ``T``): every buffer is allocated
once per image, not per tile. The blending weight is separable (a product of two 1-D sums, ``H + W``
floats, never an ``H x W`` map), one ``T x T`` input buffer is refilled for every tile, and the output is
accumulated in a band of ``T`` rows (two ``3 x T x W`` float32 buffers) that is normalised and written
into the preallocated result as soon as no later tile touches its rows. The peak is therefore

    input image + result (``3 H W`` bytes each for uint8, ``12 H W`` for float32)
    + ``24 T W`` (the two bands) + ``workers`` forward passes at ``T x T`` (``bytes_per_pixel x T^2`` each)
    + the model and the runtime,

independent of ``H`` beyond the images themselves. Measured with ``ast-restore`` (AST-T, fp32, 2 cores, 2
workers of 256 px tiles): an 8000 x 6000 photo peaked at 1.27 GiB of resident memory (README.md, "Huge
images").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "CPU_AUTO_TILE",
    "DEFAULT_BYTES_PER_PIXEL",
    "RestoreOptions",
    "available_memory",
    "dihedral",
    "dihedral_inverse",
    "restore_image",
    "restore_tensor",
    "self_ensemble",
    "TileProgress",
    "count_tiles",
    "plan_tiles",
    "tile_forward",
    "tile_size_for_budget",
    "tile_starts",
]

Forward = Callable[[torch.Tensor], torch.Tensor]
# Called after every forward pass of a tiled run with (tiles done, tiles in total): progress bars, ETAs.
TileProgress = Callable[[int, int], None]
Precision = Literal["fp32", "bf16", "fp16"]
Blend = Literal["cosine", "mean"]

# Peak inference memory per input pixel of AST-B in fp32 (activations incl. the 8x8-window attention
# maps of the full-resolution stages): 7.6-11 KB measured as the peak-RSS growth of one CPU forward pass
# at 128-512 px, rounded up. It decides when to tile and how large tiles may be; smaller models
# (AST-T) need less, so it errs towards tiling.
DEFAULT_BYTES_PER_PIXEL = 12_000
# The largest tile ``ast-restore --tile auto`` (and the served model, the demo) uses on the CPU, whatever the
# number of workers, so a restored image does not depend on how many cores the machine has. Measured for
# AST-T on 2 cores, fp32, 64 px overlap: 256 px tiles cost the same CPU time per pass pixel as 384 px (~5.7 us)
# at ~0.85 vs ~1.3 GiB peak RSS of 2 concurrent passes; the overlap makes 256 px tiles ~23% more pass pixels
# than 384 px, the price of staying within 2 GiB with 2 workers on an 8000 x 6000 photo.
CPU_AUTO_TILE = 256
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
            1152 / 384 for Dense-Haze, docs/recipes.md#tiling).
        ensemble: average the 8 dihedral transforms (8x the compute).
        precision: ``"fp32"``; ``"bf16"`` (autocast, CUDA or CPU); ``"fp16"`` (autocast, CUDA only).
        memory_budget: bytes a forward pass may use; ``None``: derived from the device's free memory.
        bytes_per_pixel: the model's peak inference memory per input pixel (see
            :data:`DEFAULT_BYTES_PER_PIXEL`).
        max_tile: with ``tile="auto"``: never a larger tile than this, and an image with a side above it
            is tiled even if it would fit the budget whole (a bound on the forward pass's memory that does
            not depend on the image; ``ast-restore`` uses :data:`CPU_AUTO_TILE` on the CPU). None: no cap.
        workers: tiles in flight at once in a tiled run, each forward pass on its own thread (results are
            blended in tile order, so the output does not depend on it). On a CPU, ``W`` workers with
            ``cores / W`` torch threads each beat one pass on all cores (small per-op work scales badly
            across threads, and one busy core stalls every thread of a pass); memory grows by one forward
            pass per worker. The caller sets the thread count (``ast-restore --workers`` does).
    """

    tile: int | Literal["auto"] | None = "auto"
    overlap: int = 64
    blend: Blend = "cosine"
    ensemble: bool = False
    precision: Precision = "fp32"
    memory_budget: int | None = None
    bytes_per_pixel: float = DEFAULT_BYTES_PER_PIXEL
    max_tile: int | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {self.workers!r}")
        if self.tile != "auto" and self.tile is not None and (not isinstance(self.tile, int) or self.tile < 0):
            raise ValueError(f"tile must be 'auto', None or a non-negative int, got {self.tile!r}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.max_tile is not None and self.max_tile <= self.overlap:
            raise ValueError(f"max_tile ({self.max_tile}) must be larger than the overlap ({self.overlap})")
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
    total = dihedral_inverse(fn(dihedral(x, 0)), 0).float()  # (B, C', H, W); k = 0 is the identity
    for k in range(1, 8):
        total = total + dihedral_inverse(fn(dihedral(x, k)), k).float()
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


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """How many forward passes :func:`tile_forward` makes on an ``h x w`` image (for progress bars)."""
    th, tw = min(tile, h), min(tile, w)
    return len(tile_starts(h, th, min(overlap, th - 1))) * len(tile_starts(w, tw, min(overlap, tw - 1)))


def _tile_grid(
    h: int, w: int, tile: int, overlap: int, blend: Blend
) -> tuple[int, int, list[int], list[int], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(th, tw, tops, lefts, ramp_y, ramp_x, weight_y, weight_x)`` of a tiling.

    The tiles form a full grid (every top with every left) and each tile's weight is the outer product
    ``ramp_y x ramp_x``, so the summed weight at ``(y, x)`` factorises into ``weight_y[y] * weight_x[x]``:
    two 1-D sums instead of an ``H x W`` weight map.
    """
    th, tw = min(tile, h), min(tile, w)
    tops = tile_starts(h, th, min(overlap, th - 1))
    lefts = tile_starts(w, tw, min(overlap, tw - 1))
    if blend == "mean":
        ry, rx = torch.ones(th), torch.ones(tw)
    else:
        ry, rx = _ramp(th, overlap), _ramp(tw, overlap)
    wy, wx = torch.zeros(h), torch.zeros(w)
    for top in tops:
        wy[top : top + th] += ry
    for left in lefts:
        wx[left : left + tw] += rx
    return th, tw, tops, lefts, ry, rx, wy, wx


Tile = tuple[int, int]  # (top, left) of a tile


def _ordered_passes(
    fn: Forward,
    tiles: Iterable[Tile],
    fill: Callable[[torch.Tensor, Tile], None],
    buffers: list[torch.Tensor],
) -> Generator[tuple[Tile, torch.Tensor], None, None]:
    """``(tile, fn(input of tile))`` for every tile, in order, with up to ``len(buffers)`` passes in flight.

    ``fill(buffer, tile)`` writes a tile's input into one of the preallocated ``buffers``; with one buffer
    the passes run on the calling thread, with ``W`` buffers on ``W`` worker threads. A buffer is refilled
    only after the pass that read it has been yielded, and results come back in tile order, so the blended
    output is the same for any number of workers. Autograd and autocast state is per thread in torch:
    each worker pass runs under ``torch.inference_mode`` itself (``fn`` carries its own autocast).
    """
    workers = len(buffers)
    if workers == 1:
        for tile in tiles:
            fill(buffers[0], tile)
            yield tile, fn(buffers[0])
        return

    def run(buf: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(buf)

    pending: deque[tuple[Tile, Future[torch.Tensor]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ast-tile") as pool:
        try:
            for i, tile in enumerate(tiles):
                if len(pending) == workers:  # the oldest pass holds buffers[i % workers]: collect it first
                    done, future = pending.popleft()
                    yield done, future.result()
                fill(buffers[i % workers], tile)
                pending.append((tile, pool.submit(run, buffers[i % workers])))
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:  # an error or an abandoned generator: do not start the passes still queued
            for _, future in pending:
                future.cancel()


def tile_forward(
    fn: Forward,
    x: torch.Tensor,
    tile: int,
    overlap: int,
    device: torch.device,
    blend: Blend = "cosine",
    *,
    progress: TileProgress | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """Run ``fn`` tile by tile and blend the tiles.

    The output accumulator is allocated once, one input tile buffer on ``device`` is reused for every
    tile, and the blending weight is kept as two 1-D vectors (see :func:`_tile_grid`).

    Args:
        fn: maps a ``(B, C, h, w)`` tensor on ``device`` to ``(B, C', h, w)``.
        x: ``(B, C, H, W)`` on any device (typically the CPU).
        tile: tile side; tiles are clipped to the image (a 1x1 image is one 1x1 tile).
        overlap: pixels shared by neighbouring tiles.
        device: where ``fn`` runs.
        blend: ``"cosine"`` (see :func:`_ramp`) or ``"mean"`` (equal weights, the official scripts).
        progress: called after every tile with ``(tiles done, tiles in total)``.
        workers: passes in flight at once (see :attr:`RestoreOptions.workers`).

    Returns:
        ``(B, C', H, W)`` float32 on ``x``'s device.
    """
    b, c, h, w = x.shape
    th, tw, tops, lefts, ry, rx, wy, wx = _tile_grid(h, w, tile, overlap, blend)
    win = (ry[:, None] * rx[None, :]).to(x.device)  # (th, tw)
    total = len(tops) * len(lefts)
    buffers = [torch.empty((b, c, th, tw), dtype=torch.float32, device=device) for _ in range(workers)]

    def fill(buf: torch.Tensor, tile: Tile) -> None:
        top, left = tile
        buf.copy_(x[..., top : top + th, left : left + tw])  # (B, C, th, tw), no new allocation

    out = None
    grid = [(top, left) for top in tops for left in lefts]
    for done, ((top, left), y) in enumerate(_ordered_passes(fn, grid, fill, buffers), start=1):
        y = y.float()  # (B, C', th, tw)
        if out is None:  # the output channel count is known after the first tile
            out = torch.zeros((b, y.shape[1], h, w), dtype=torch.float32, device=x.device)
        out[..., top : top + th, left : left + tw].addcmul_(y.to(x.device), win)
        if progress is not None:
            progress(done, total)
    weight = (wy[:, None] * wx[None, :]).to(x.device)  # (H, W): the sum of every tile's window
    assert out is not None  # tile_starts gives at least one start per axis, so the loop ran
    return out.div_(weight)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor view of ``array`` without a copy, also for read-only arrays (images decoded by Pillow):
    the view is only ever read, so torch's warning about non-writable memory does not apply."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _tiled_hwc(
    fn: Forward,
    image: np.ndarray,
    tile: int,
    overlap: int,
    device: torch.device,
    blend: Blend,
    *,
    out_dtype: type[np.generic],
    progress: TileProgress | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Tiled restoration of one ``(H, W, 3)`` image into a preallocated ``(H, W, 3)`` result, band by band.

    Tiles are visited row by row. The running sum lives in a band of ``th`` rows starting at the current
    tile row; when the next tile row starts at ``top'``, rows ``[top, top')`` can receive nothing more:
    they are normalised, clamped to [0, 1], converted to ``out_dtype`` and written to the result, and the
    rest of the band moves up (into the second band buffer; a copy onto itself would overlap). Memory is
    therefore bounded by the two images, ``2 x 3 x th x W`` floats and one forward pass (module docstring).

    Args:
        fn: maps ``(1, 3, th, tw)`` on ``device`` to the same shape.
        image: ``(H, W, 3)`` uint8 (0-255) or float (0-1).
        tile: tile side.
        overlap: pixels shared by neighbouring tiles.
        device: where ``fn`` runs.
        blend: ``"cosine"`` or ``"mean"``.
        out_dtype: ``np.float32`` (values in [0, 1]) or ``np.uint8`` (rounded half to even, as
            :func:`ast_model.eval.images.to_uint8`).
        progress: called after every tile with ``(tiles done, tiles in total)``.
        workers: passes in flight at once (see :attr:`RestoreOptions.workers`).

    Returns:
        The restored ``(H, W, 3)`` image.
    """
    h, w, _ = image.shape
    th, tw, tops, lefts, ry, rx, wy, wx = _tile_grid(h, w, tile, overlap, blend)
    win = ry[:, None] * rx[None, :]  # (th, tw)
    src = _as_tensor(image).permute(2, 0, 1)  # (3, H, W) view: no copy of the image
    scale = 255.0 if image.dtype == np.uint8 else None
    result = np.empty((h, w, 3), dtype=out_dtype)
    dst = torch.from_numpy(result).permute(2, 0, 1)  # (3, H, W) view of the result
    band, spare = torch.zeros((3, th, w)), torch.zeros((3, th, w))
    buffers = [torch.empty((1, 3, th, tw), dtype=torch.float32, device=device) for _ in range(workers)]

    def fill(buf: torch.Tensor, tile: Tile) -> None:
        top, left = tile
        buf[0].copy_(src[:, top : top + th, left : left + tw])  # uint8 -> float32 in the copy
        if scale is not None:
            buf.div_(scale)  # the same float32 values as read_image's `/ 255.0`

    total = len(tops) * len(lefts)
    grid = ((top, left) for top in tops for left in lefts)
    done = 0
    # closing(): the worker threads stop when the last row is written (or on an error), not at GC.
    with contextlib.closing(_ordered_passes(fn, grid, fill, buffers)) as passes:
        for i, top in enumerate(tops):
            for _ in lefts:  # the passes of this tile row, in order
                (_, left), y = next(passes)
                band[:, :, left : left + tw].addcmul_(y[0].float().to("cpu"), win)  # y: (1, 3, th, tw)
                done += 1
                if progress is not None:
                    progress(done, total)
            final = (tops[i + 1] if i + 1 < len(tops) else top + th) - top  # rows no later tile touches
            rows = band[:, :final]
            rows.div_(wy[top : top + final, None] * wx[None, :]).clamp_(0.0, 1.0)
            if out_dtype == np.uint8:
                rows.mul_(255.0).round_()  # round half to even: to_uint8's rounding
            dst[:, top : top + final].copy_(rows)
            keep = th - final  # rows shared with the next tile row: they move to the top of the band
            spare.zero_()
            if keep:
                spare[:, :keep].copy_(band[:, final:])
            band, spare = spare, band
    return result


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
    """No autograd (inference mode: no version counters, no saved tensors), the model in eval(); the
    caller's train/eval flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _choose_tile(model: nn.Module, opts: RestoreOptions, batch: int, h: int, w: int, dev: torch.device) -> int | None:
    """The tile side for an ``h x w`` input, or None for one whole-image pass."""
    tile = opts.tile
    if tile == "auto":
        budget = opts.memory_budget if opts.memory_budget is not None else available_memory(dev)
        fits = batch * h * w * opts.bytes_per_pixel <= budget
        multiple = int(getattr(model, "pad_multiple", 1))
        tile = None if fits else tile_size_for_budget(budget, opts.bytes_per_pixel, multiple)
        if opts.max_tile is not None and (h > opts.max_tile or w > opts.max_tile):
            tile = min(tile or opts.max_tile, opts.max_tile)
    if not tile or (tile >= h and tile >= w):
        return None
    return int(tile)


def _forward_fn(model: nn.Module, opts: RestoreOptions, dev: torch.device) -> Forward:
    """The per-pass function: the model (under autocast for bf16/fp16), self-ensembled on request."""
    if opts.precision == "fp16" and dev.type != "cuda":  # CPU autocast has bf16; fp16 there is slow and narrow
        raise ValueError(f"precision {opts.precision!r} needs a CUDA device (running on {dev}); use bf16 or fp32")

    def forward(t: torch.Tensor) -> torch.Tensor:
        if opts.precision == "fp32":
            return model(t)
        with torch.autocast(device_type=dev.type, dtype=_DTYPES[opts.precision]):
            return model(t)

    return (lambda t: self_ensemble(forward, t)) if opts.ensemble else forward


def plan_tiles(
    model: nn.Module,
    shape: tuple[int, int],
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
) -> tuple[int | None, int]:
    """``(tile side or None, number of forward passes)`` that :func:`restore_image` will use for an image
    of ``shape = (H, W)``: a progress bar knows its total before the first tile."""
    opts = options or RestoreOptions()
    dev = torch.device(device) if device is not None else _model_device(model)
    h, w = shape
    tile = _choose_tile(model, opts, 1, h, w, dev)
    return tile, 1 if tile is None else count_tiles(h, w, tile, opts.overlap)


def restore_tensor(
    model: nn.Module,
    x: torch.Tensor,
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
    *,
    progress: TileProgress | None = None,
) -> torch.Tensor:
    """Restore a batch: whole or tiled, optionally self-ensembled.

    Args:
        model: maps ``(B, 3, H, W)`` to the same shape; it runs in eval mode without autograd.
        x: ``(B, 3, H, W)`` float in [0, 1], on any device (kept there; tiles travel to ``device``).
        options: how to run (defaults: auto tiling, no ensemble, fp32).
        device: where the model runs; default: the device of its parameters (CPU if it has none).
        progress: called with ``(passes done, passes in total)`` after every forward pass.

    Returns:
        ``(B, 3, H, W)`` float32 on ``x``'s device, not clamped.

    Raises:
        ValueError: a wrong input layout, or fp16 requested off CUDA.
    """
    opts = options or RestoreOptions()
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    dev = torch.device(device) if device is not None else _model_device(model)
    fn = _forward_fn(model, opts, dev)
    x = x.float()
    h, w = x.shape[-2:]
    tile = _choose_tile(model, opts, x.shape[0], h, w, dev)
    with _eval_mode(model):
        if tile is None:
            out = fn(x.to(dev)).float().to(x.device)
            if progress is not None:
                progress(1, 1)
            return out
        return tile_forward(fn, x, tile, opts.overlap, dev, opts.blend, progress=progress, workers=opts.workers)


def restore_image(
    model: nn.Module,
    image: np.ndarray,
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
    *,
    out_dtype: type[np.generic] = np.float32,
    progress: TileProgress | None = None,
) -> np.ndarray:
    """Restore one image.

    A tiled restoration streams: tiles are read from ``image`` as they are needed and the result is built
    band by band into one preallocated array (memory bound in the module docstring).

    Args:
        model: maps ``(B, 3, H, W)`` to the same shape.
        image: ``(H, W, 3)`` RGB, float in [0, 1] (see :func:`ast_model.eval.images.read_image`) or uint8
            (0-255; converted tile by tile, which saves the float copy of a huge photo).
        options: see :class:`RestoreOptions`.
        device: where the model runs; default: its parameters' device.
        out_dtype: ``np.float32`` (default) or ``np.uint8`` (what a PNG stores: quantised as
            :func:`ast_model.eval.images.to_uint8` does, without a float copy of the whole result).
        progress: called with ``(passes done, passes in total)`` after every forward pass (a tiled image
            makes one pass per tile).

    Returns:
        ``(H, W, 3)`` of ``out_dtype``, float32 in [0, 1] (the output is clamped, as the official test
        scripts do) or uint8.

    Raises:
        ValueError: not an ``(H, W, 3)`` float or uint8 image, or an unsupported ``out_dtype``.
    """
    is_float = np.issubdtype(image.dtype, np.floating)
    if image.ndim != 3 or image.shape[-1] != 3 or not (is_float or image.dtype == np.uint8):
        raise ValueError(f"expected an (H, W, 3) float image in [0, 1] or uint8, got {image.shape} {image.dtype}")
    if out_dtype not in (np.float32, np.uint8):
        raise ValueError(f"out_dtype must be np.float32 or np.uint8, got {out_dtype!r}")
    opts = options or RestoreOptions()
    dev = torch.device(device) if device is not None else _model_device(model)
    fn = _forward_fn(model, opts, dev)
    if is_float and image.dtype != np.float32:
        image = image.astype(np.float32)
    image = np.ascontiguousarray(image)
    h, w, _ = image.shape
    tile = _choose_tile(model, opts, 1, h, w, dev)
    with _eval_mode(model):
        if tile is not None:
            return _tiled_hwc(
                fn,
                image,
                tile,
                opts.overlap,
                dev,
                opts.blend,
                out_dtype=out_dtype,
                progress=progress,
                workers=opts.workers,
            )
        x = _as_tensor(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        if not is_float:
            x = x / 255.0
        y = fn(x.to(dev)).float().to("cpu")[0].clamp_(0, 1)  # (3, H, W)
        if out_dtype == np.uint8:
            y = y.mul_(255.0).round_().to(torch.uint8)
        result = np.ascontiguousarray(y.permute(1, 2, 0).numpy())  # (H, W, 3)
    if progress is not None:
        progress(1, 1)
    return result
