"""Speed and memory benchmark of the AST forward pass and training step (not a test).

    python -m ast_model.bench [--repeats 5] [--cases t_fwd b_fwd t_step] [--impls fast reference]
    python -m ast_model.bench --device cuda [--models ast_t ast_b] [--precisions ...] [--modes ...]

With ``--device`` it runs the precision x compile x impl matrix of :mod:`ast_model.bench_device` on that
device (fp32 / whole bf16 / bf16 autocast, eager / compiled, fast / reference side by side; ``--smoke``
for a quick CPU check of the same code). Without it, the CPU table below:

Cases (fp32, torch threads = cores, 1 warm-up then ``--repeats`` timed runs):
    t_fwd   AST-T forward, eval + no_grad, 1x3x256x256
    b_fwd   AST-B forward, eval + no_grad, 1x3x256x256
    t_step  AST-T training step, 4x3x128x128: zero_grad + forward + Charbonnier + backward + AdamW,
            train mode (DropPath on)

Every (case, impl) runs in its own process so that its peak RSS is its own; the impls of a case run
alternately, side by side, so the ratio between them holds even on a busy machine. "reference" is the
plain spec-literal path (same math); "fast" is the default.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from ast_model.bench_device import MODES, PRECISIONS
from ast_model.bench_device import run as run_matrix

CASES = ("t_fwd", "b_fwd", "t_step")


def _run_case(case: str, impl: str, repeats: int, malloc_tuning: bool, threads: int | None = None) -> dict:
    """Time one case in this process; returns times (s), peak RSS (MiB) and CPU time per run."""
    import ast_model
    from ast_model.runtime import set_threads, tune_malloc
    from ast_model.train.loss import charbonnier

    tuned = tune_malloc() if malloc_tuning else False
    threads = set_threads(threads)
    torch.manual_seed(0)
    if case == "t_step":
        model = ast_model.create_model("ast_t").train().set_impl(impl)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.02)
        x, y = torch.rand(4, 3, 128, 128), torch.rand(4, 3, 128, 128)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            charbonnier(model(x), y).backward()
            opt.step()
    else:
        model = ast_model.create_model("ast_t" if case == "t_fwd" else "ast_b").eval().set_impl(impl)
        x = torch.rand(1, 3, 256, 256)

        def step() -> None:
            with torch.no_grad():
                model(x)

    step()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {
        "case": case,
        "impl": impl,
        "times": times,
        "cpu": cpu,
        "peak_mib": peak,
        "threads": threads,
        "malloc_tuned": tuned,
    }


def _spawn(case: str, impl: str, repeats: int, malloc_tuning: bool, threads: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "ast_model.bench", "--worker", case, impl, "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    if malloc_tuning:
        cmd.append("--malloc-tuning")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (one process per case and impl)."""
    ap = argparse.ArgumentParser(prog="python -m ast_model.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--impls", nargs="+", default=["fast", "reference"], choices=["fast", "reference"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="alternate the impls this many times per case")
    ap.add_argument(
        "--malloc-tuning",
        action="store_true",
        help="fixed 1 MiB glibc mmap threshold: lower peak RSS, but slower (page faults)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (default: every core; on a shared machine 1 "
        "thread keeps ratios stable, 2 threads stall on a busy core)",
    )
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    dev = ap.add_argument_group("device matrix (with --device)")
    dev.add_argument("--device", help="run the precision x compile matrix on this device (cuda, cuda:1, cpu)")
    dev.add_argument("--models", nargs="+", default=["ast_t", "ast_b"], choices=["ast_t", "ast_b"])
    dev.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    dev.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    dev.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled rows")
    dev.add_argument("--warmup", type=int, default=2, help="untimed steps first (the compilation happens here)")
    dev.add_argument("--budget-s", type=float, default=480.0, help="start no new case after this many seconds")
    dev.add_argument("--smoke", action="store_true", help="tiny models and sizes (checks the code path)")
    args = ap.parse_args(argv)
    if args.device:
        run_matrix(
            args.device,
            args.models,
            args.precisions,
            args.modes,
            args.impls,
            smoke=args.smoke,
            backend=args.backend,
            warmup=args.warmup,
            repeats=args.repeats,
            budget_s=args.budget_s,
        )
        return 0
    if args.worker:
        case, impl = args.worker
        print(json.dumps(_run_case(case, impl, args.repeats, args.malloc_tuning, args.threads)))
        return 0

    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"malloc tuning {'on' if args.malloc_tuning else 'off'}"
    )
    print(f"{'case':8} {'impl':10} {'median s':>9} {'min s':>7} {'cpu s':>7} {'peak MiB':>9}  ratio(ref/fast, median)")
    for case in args.cases:
        runs: dict[str, list[dict]] = {impl: [] for impl in args.impls}
        for _ in range(args.rounds):
            for impl in args.impls:
                runs[impl].append(_spawn(case, impl, args.repeats, args.malloc_tuning, args.threads))
        med = {}
        for impl, rs in runs.items():
            times = [t for r in rs for t in r["times"]]
            cpu = [t for r in rs for t in r["cpu"]]
            med[impl] = statistics.median(times)
            ratio = f"{med[impl] / med['fast']:.2f}x" if "fast" in med and impl != "fast" else ""
            print(
                f"{case:8} {impl:10} {med[impl]:9.3f} {min(times):7.3f} {statistics.median(cpu):7.2f} "
                f"{max(r['peak_mib'] for r in rs):9.0f}  {ratio}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
