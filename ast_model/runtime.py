"""Process-level runtime settings for CPU runs (threads, allocator)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter number (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger thresholds on 64-bit (HEAP_MAX_SIZE / 2)


def tune_malloc(mmap_threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes or more straight from mmap (glibc only).

    glibc raises its mmap threshold dynamically up to 32 MiB after large frees, so the 1-32 MiB
    activation tensors of a training step end up in the heap, fragment it and keep the resident size
    high long after they are freed. A fixed threshold returns them to the OS on free: the peak RSS of an
    AST-T training step (4x128x128) drops from ~1.73 to ~1.39 GiB, but every large allocation then
    page-faults fresh memory, which costs time (the step went from ~2.0 to ~3.5 s here): use it when
    memory, not speed, is the limit. Settings made with
    ``MALLOC_MMAP_THRESHOLD_`` in the environment win (this call does nothing then).

    Returns:
        True if the threshold was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return _mallopt({_M_MMAP_THRESHOLD: mmap_threshold})


def tune_allocator(
    mmap_threshold: int = _MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30, arena_max: int = 1
) -> bool:
    """Keep freed inference buffers in the heap for the next forward pass (glibc only; CLI entry points).

    A tiled restoration runs the same forward pass hundreds of times. With glibc's defaults every tensor
    over the (dynamic) mmap threshold is mapped fresh and unmapped on free, and the top of the heap is
    trimmed back to the OS, so each tile page-faults its whole working set in again: for AST-T at 384 px
    ~0.5 M minor faults and ~0.9 s of system time per tile (measured). A fixed 32 MiB mmap threshold
    (glibc's maximum) and a 1 GiB trim threshold make later tiles reuse the same heap pages: ~60 k faults,
    ~0.1 s system time, the same peak RSS within ~5%. One arena: with tiles on worker threads
    (``ast-restore --workers``) glibc gives each thread its own arena, and those arenas return freed
    memory to the OS eagerly (AST-T, 384 px, 2 workers: ~390 k faults and 0.7 s system time per tile with
    per-thread arenas, ~160 k and 0.3 s with one, same speed otherwise; the few hundred allocations per pass
    do not contend for its lock). It changes process-wide allocator behaviour, so only command-line entry
    points call it, never the library. ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` /
    ``MALLOC_ARENA_MAX`` in the environment win (nothing is changed then).

    Args:
        mmap_threshold: allocations of this many bytes or more are mapped separately.
        trim_threshold: free memory at the top of the heap kept for reuse.
        arena_max: how many malloc arenas threads share.

    Returns:
        True if all settings were applied.
    """
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False
    return _mallopt({_M_MMAP_THRESHOLD: mmap_threshold, _M_TRIM_THRESHOLD: trim_threshold, _M_ARENA_MAX: arena_max})


def _mallopt(settings: dict[int, int]) -> bool:
    """glibc ``mallopt`` for each ``param -> value``; False where it refuses or libc is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return all(bool(libc.mallopt(param, int(value))) for param, value in settings.items())
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False


def cpu_count() -> int:
    """The cores this process may run on (its CPU set where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(num: int | None = None) -> int:
    """Use ``num`` intra-op threads (default: all cores of this process's CPU set); returns the count."""
    if num is None:
        num = cpu_count()
    torch.set_num_threads(num)
    return num


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as torch spells it (``cuda:1``).

    Raises:
        ValueError: a CUDA device is asked for where CUDA is not available.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here")
    return device
