"""Precision x compile x impl benchmark on one device (``python -m ast_model.bench --device cuda``).

For each model (AST-T, AST-B) it prints:

- the fp32 max abs difference of the fast path against the reference path (eval, 2x3x256x256, TF32 off);
- inference (eval, ``no_grad``) at 1x3x512x512 and 16x3x256x256: ms per batch, images/s, peak memory;
- a training step (zero_grad, forward, Charbonnier, backward, AdamW) at 16x3x128x128: ms, images/s, peak
  memory and achieved TFLOP/s (6 x MACs per image x batch / time: forward 2 FLOPs per MAC, backward twice that);

for each precision (``fp32``: TF32 allowed on CUDA; ``bf16``: the whole model in bf16, as DeepSpeed's bf16
mode computes; ``autocast_bf16``: fp32 weights under ``torch.autocast``), eager and compiled
(:meth:`ast_model.nn.ast.AST.compile_network`), with the fast and reference paths side by side.
Compilation happens in the untimed warm-up; its time is a column of its own.

It imports torch and ``ast_model`` only (no DeepSpeed, no MLflow), so a copy of the repository runs it on
a GPU machine. ``--device cpu`` runs the same code (use ``--smoke`` there: tiny models and sizes).
``--budget-s`` stops starting new cases after that many seconds (the table says which were skipped).
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

import ast_model
from ast_model.train.loss import charbonnier

PRECISIONS = ("fp32", "bf16", "autocast_bf16")
IMPLS = ("fast", "reference")
MODES = ("eager", "compiled")


@dataclass(frozen=True)
class Sizes:
    """Batch x side of each case (``smoke``: tiny, for CPU checks of the code path)."""

    diff: tuple[int, int] = (2, 256)
    infer: tuple[tuple[int, int], ...] = ((1, 512), (16, 256))
    train: tuple[int, int] = (16, 128)
    model_overrides: dict = field(default_factory=dict)


FULL = Sizes()
SMOKE = Sizes(
    diff=(1, 64), infer=((1, 64), (2, 64)), train=(2, 64), model_overrides=dict(embed_dim=8, depths=[1] * 9, win_size=4)
)


@dataclass
class Result:
    """One measured (or skipped / failed) case."""

    ms: float | None = None
    images_per_s: float | None = None
    peak_gib: float | None = None
    tflops: float | None = None
    compile_s: float | None = None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset (CUDA); None on CPU (no per-case peak there)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "autocast_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _model(
    name: str, impl: str, precision: str, mode: str, train: bool, sizes: Sizes, device: torch.device, backend: str
) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ast_model.create_model(name, **sizes.model_overrides).to(device).set_impl(impl).train(train)
    if precision == "bf16":
        model = model.bfloat16()
    if mode == "compiled":
        torch._dynamo.reset()  # every case compiles afresh: no cache limit shared between cases
        model.compile_network(backend=backend)
    return model


def _time(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds per step, seconds of the first warm-up step, which includes any compilation)."""
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    _sync(device)
    _reset_memory(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def fp32_max_diff(name: str, sizes: Sizes, device: torch.device) -> float:
    """Max abs difference fast vs reference path, fp32 with TF32 off, eval mode."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model = ast_model.create_model(name, **sizes.model_overrides).to(device).eval()
        b, side = sizes.diff
        x = torch.rand(b, 3, side, side, device=device)
        with torch.no_grad():
            fast = model.set_impl("fast")(x)
            ref = model.set_impl("reference")(x)
        return float((fast - ref).abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def inference(
    name: str,
    impl: str,
    precision: str,
    mode: str,
    batch: int,
    side: int,
    sizes: Sizes,
    device: torch.device,
    backend: str,
    warmup: int,
    repeats: int,
) -> Result:
    """Eval-mode forward under ``no_grad``."""
    model = _model(name, impl, precision, mode, False, sizes, device, backend)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.rand(batch, 3, side, side, device=device, dtype=dtype)

    def step() -> None:
        with torch.no_grad(), _autocast(device, precision):
            model(x)

    sec, first = _time(step, device, warmup, repeats)
    return Result(sec * 1e3, batch / sec, _peak_gib(device), None, first - sec if mode == "compiled" else None)


def train_step(
    name: str,
    impl: str,
    precision: str,
    mode: str,
    sizes: Sizes,
    device: torch.device,
    backend: str,
    warmup: int,
    repeats: int,
    macs_per_image: int,
) -> Result:
    """zero_grad + forward + Charbonnier + backward + AdamW, train mode (stochastic depth on).

    ``bf16``: weights, gradients and AdamW states in bf16 (DeepSpeed's bf16 mode also keeps fp32 master
    weights and moments in its optimizer: add 12 bytes per parameter to the peak for that).
    """
    model = _model(name, impl, precision, mode, True, sizes, device, backend)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.02)
    batch, side = sizes.train
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    y = torch.rand(batch, 3, side, side, device=device, generator=gen)
    x = (y + 0.05 * torch.randn(y.shape, device=device, generator=gen)).clamp(0, 1).to(dtype)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            out = model(x)
        charbonnier(out, y).backward()
        opt.step()

    sec, first = _time(step, device, warmup, repeats)
    tflops = 6 * macs_per_image * batch / sec / 1e12
    return Result(sec * 1e3, batch / sec, _peak_gib(device), tflops, first - sec if mode == "compiled" else None)


def _fmt(v: float | None, spec: str) -> str:
    """``format(v, spec)``, or a dash of the same width for a missing value."""
    if v is None or math.isnan(v):
        return "-".rjust(int(spec.split(".")[0]))
    return format(v, spec)


def _cell(r: Result) -> str:
    if r.note:
        return f"{r.note:>40}"
    return (
        f"{_fmt(r.ms, '9.1f')} {_fmt(r.images_per_s, '8.1f')} {_fmt(r.peak_gib, '6.2f')} "
        f"{_fmt(r.tflops, '6.1f')} {_fmt(r.compile_s, '7.0f')}"
    )


# (model, case label, precision, mode, (batch, side) of an inference case or None for a training step)
Case = tuple[str, str, str, str, tuple[int, int] | None]


def _cases(models: Sequence[str], precisions: Sequence[str], modes: Sequence[str], sizes: Sizes) -> Iterator[Case]:
    for name in models:
        for batch, side in sizes.infer:
            for precision in precisions:
                for mode in modes:
                    yield name, f"infer {batch}x3x{side}^2", precision, mode, (batch, side)
        b, s = sizes.train
        for precision in precisions:
            for mode in modes:
                yield name, f"train {b}x3x{s}^2", precision, mode, None


def run(
    device: str = "cuda",
    models: Sequence[str] = ("ast_t", "ast_b"),
    precisions: Sequence[str] = PRECISIONS,
    modes: Sequence[str] = MODES,
    impls: Sequence[str] = IMPLS,
    smoke: bool = False,
    backend: str = "inductor",
    warmup: int = 2,
    repeats: int = 5,
    budget_s: float = 480.0,
    print_fn: Callable[[str], None] = print,
) -> dict[tuple[str, str, str, str, str], Result]:
    """Run the matrix and print the table; returns ``{(model, case, precision, mode, impl): Result}``."""
    dev = torch.device(device)
    sizes = SMOKE if smoke else FULL
    start = time.perf_counter()
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" rows: TF32 tensor cores, as GPU users train
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print_fn(f"torch {torch.__version__}, {name}, backend {backend}, median of {repeats} after {warmup} warm-up")
    for m in models:
        print_fn(
            f"{m}: fp32 max |fast - reference| at {sizes.diff[0]}x3x{sizes.diff[1]}^2 (TF32 off): "
            f"{fp32_max_diff(m, sizes, dev):.2e}"
        )
    head = f"{'ms':>9} {'img/s':>8} {'GiB':>6} {'TFLOP/s':>6} {'comp s':>7}"
    print_fn(
        f"{'model':6} {'case':18} {'precision':14} {'mode':9} | "
        + " | ".join(f"{i}: {head}" for i in impls)
        + " | ref/fast time, fast/ref memory"
    )
    results: dict[tuple[str, str, str, str, str], Result] = {}
    macs = {
        m: ast_model.count_macs(
            ast_model.create_model(m, **sizes.model_overrides), (1, 3, sizes.train[1], sizes.train[1])
        )
        for m in models
    }
    for model_name, case, precision, mode, infer in _cases(models, precisions, modes, sizes):
        row: dict[str, Result] = {}
        for impl in impls:
            if time.perf_counter() - start > budget_s:
                row[impl] = results[(model_name, case, precision, mode, impl)] = Result(note="skipped (budget)")
                continue
            try:
                if infer is not None:
                    batch, side = infer
                    row[impl] = inference(
                        model_name, impl, precision, mode, batch, side, sizes, dev, backend, warmup, repeats
                    )
                else:
                    row[impl] = train_step(
                        model_name, impl, precision, mode, sizes, dev, backend, warmup, repeats, macs[model_name]
                    )
            except torch.cuda.OutOfMemoryError:
                row[impl] = Result(note="out of memory")
            except Exception as exc:  # one failing case must not lose the rest of the table
                row[impl] = Result(note=f"{type(exc).__name__}: {exc}"[:40])
            finally:
                _reset_memory(dev)
            results[(model_name, case, precision, mode, impl)] = row[impl]
        ratio = ""
        fast, ref = row.get("fast"), row.get("reference")
        if fast and ref and fast.ms and ref.ms:
            ratio = f"{ref.ms / fast.ms:5.2f}x"
            if fast.peak_gib and ref.peak_gib:
                ratio += f" {fast.peak_gib / ref.peak_gib:5.2f}x"
        print_fn(
            f"{model_name:6} {case:18} {precision:14} {mode:9} | "
            + " | ".join(f"{' ' * (len(i) + 2)}{_cell(row[i])}" for i in impls)
            + f" | {ratio}"
        )
    return results
