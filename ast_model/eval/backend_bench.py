"""CPU speed of the onnxruntime backend against the PyTorch fast path, side by side (not a test).

    python -m ast_model.eval.backend_bench --model ast_t=t.pt,t.onnx --model ast_b=b.pt,b.onnx [--repeats 5]

Per model, two cases (fp32, eval, no autograd):

- ``1x3x256x256``: one forward pass of a ``(1, 3, 256, 256)`` tensor;
- ``512x512 image``: ``restore_image`` of a 512 x 512 uint8 photo with ``ast-restore``'s CPU defaults
  (automatic tiling capped at 384 px: 4 tiles of 384 with 64 px overlap, cosine blending).

Both backends use the same thread count. Each repeat runs PyTorch then onnxruntime on the same input, so
a busy machine slows both alike and the ratio holds; one warm-up each first. Prints a Markdown table of
medians (and min/max) and the ratio PyTorch / onnxruntime (> 1: onnxruntime is faster), and writes JSON
with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ast_model.eval.restore import CPU_AUTO_TILE, RestoreOptions, restore_image


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_pair(pytorch: torch.nn.Module, onnx: torch.nn.Module, repeats: int, seed: int = 0) -> list[dict]:
    """Side-by-side timings of the two cases (module docstring) for one model in both backends."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 256, 256, generator=gen)  # (1, 3, 256, 256)
    photo = (np.random.default_rng(seed).random((512, 512, 3)) * 255).astype(np.uint8)
    options = RestoreOptions(max_tile=CPU_AUTO_TILE)  # what ast-restore uses on the CPU

    def forward(model: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(x)

        return run

    def image(model: torch.nn.Module) -> Callable[[], object]:
        return lambda: restore_image(model, photo, options, "cpu", out_dtype=np.uint8)

    rows = []
    for case, make in (("1x3x256x256", forward), ("512x512 image", image)):
        runs = {"pytorch": make(pytorch), "onnxruntime": make(onnx)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up: oneDNN primitive caches, onnxruntime's first-run allocations
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(_timed(fn))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            {
                "case": case,
                "repeats": repeats,
                "times_s": times,
                "median_s": med,
                "ratio_pytorch_over_onnxruntime": med["pytorch"] / med["onnxruntime"],
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns 0."""
    from ast_model.checkpoint import load_checkpoint
    from ast_model.eval.onnx_backend import OnnxRestorer

    p = argparse.ArgumentParser(prog="python -m ast_model.eval.backend_bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=CHECKPOINT,ONNX (the .onnx exported from that checkpoint); repeatable",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per backend and case (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the raw timings here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results = {}
    for spec in args.model:
        name, _, files = spec.partition("=")
        ckpt, _, onnx_path = files.partition(",")
        pytorch = load_checkpoint(ckpt).eval()
        results[name] = bench_pair(pytorch, OnnxRestorer(onnx_path, threads=threads), args.repeats)
        del pytorch
    print(f"CPU, fp32, {threads} threads, torch {torch.__version__}, medians of {args.repeats} side-by-side runs\n")
    print("| model | case | PyTorch fast path | onnxruntime | PyTorch / onnxruntime |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        for r in rows:
            pt, ort_ = r["median_s"]["pytorch"], r["median_s"]["onnxruntime"]
            print(f"| {name} | {r['case']} | {pt:.3f} s | {ort_:.3f} s | {r['ratio_pytorch_over_onnxruntime']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
