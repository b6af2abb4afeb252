"""Training throughput: plain PyTorch vs our DeepSpeed step, and 1 vs 2 processes.

``python -m ast_model.train.step_bench`` measures, on synthetic batches (no data loading in either loop):

1. a plain PyTorch loop: forward, Charbonnier, backward, ``torch.optim.AdamW`` step;
2. the training loop's optimizer step (:meth:`ast_model.train.loop.Trainer._optimizer_step`: LR set, loss,
   NaN-guard collective, DeepSpeed backward and step) in one process, on the same cores;
3. the same with N processes under torchrun (cores / N threads each, micro batch per process unchanged,
   so the global batch grows: weak scaling). Scaling efficiency = images/s(N) / (N x images/s of one
   process with the same threads per process).

Engine overhead = (time per step of 2) / (time per step of 1) - 1; the target is <= 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ast_model import create_model
from ast_model.train.loss import charbonnier


def _batch(batch: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(batch, 3, patch, patch, generator=gen)
    return (target + 0.05 * torch.randn(target.shape, generator=gen)).clamp(0, 1), target


def _timed(step: Callable[[], object], warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per step: (median, minimum) of the timed steps, after ``warmup`` untimed ones.

    On a shared machine the minimum is the better estimate of the step's own cost; the median shows
    what a run would see under the same load.
    """
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], min(times)


def plain_loop(model_name: str, batch: int, patch: int, warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per step (median, min) of a plain PyTorch training loop."""
    torch.manual_seed(0)
    model = create_model(model_name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.02)
    x, y = _batch(batch, patch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        charbonnier(model(x), y).backward()
        opt.step()

    return _timed(step, warmup, steps)


def engine_loop(model_name: str, batch: int, patch: int, warmup: int, steps: int, zero: int) -> dict[str, Any]:
    """Seconds per step of the training loop's DeepSpeed step (call on every rank of a job)."""
    from ast_model.train.config import PhaseConfig, TrainConfig, deepspeed_config, resolve_phases
    from ast_model.train.data import SyntheticData
    from ast_model.train.distributed import ensure_launcher_env, init_distributed
    from ast_model.train.engine import build_engine
    from ast_model.train.loop import Trainer
    from ast_model.train.resume import CheckpointStore
    from ast_model.train.spec import RunSpec
    from ast_model.train.tracker import NullTracker

    ensure_launcher_env()  # this benchmark is its own entry point (python -m ... --worker)
    info = init_distributed("auto", 600)
    cfg = TrainConfig(phases=[PhaseConfig(patch, batch * info.world_size, 2e-4, steps=warmup + steps)], zero_stage=zero)  # type: ignore[arg-type]
    phases = resolve_phases(cfg, world_size=info.world_size, train_samples=None)
    spec = RunSpec(
        train=cfg,
        profile="bench",
        model_name=model_name,
        model_kwargs={},
        phases=phases,
        world_size=info.world_size,
        train_dir="",
        val_dir=None,
        out_dir="",
        ckpt_dir="",
    )
    torch.manual_seed(0)
    model = create_model(model_name)
    engine = build_engine(model, deepspeed_config(cfg, micro_batch=batch, world_size=info.world_size, lr=2e-4))
    data = SyntheticData(rank=info.rank)
    trainer = Trainer(spec, engine, data, CheckpointStore(tempfile.gettempdir(), info), NullTracker(), info)
    x, y = _batch(batch, patch)
    batches = iter(lambda: (x, y), None)  # the same batch forever, as the plain loop
    counter = iter(range(10**9))
    median, fastest = _timed(lambda: trainer._optimizer_step(batches, 0, next(counter)), warmup, steps)
    return {"rank": info.rank, "world_size": info.world_size, "s_per_step": [median, fastest]}


def _run_procs(args: argparse.Namespace, procs: int, threads: int) -> tuple[float, float]:
    """Seconds per step (median, min; slowest rank) of ``procs`` processes, ``threads`` each, under torchrun."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
            "--max_restarts",
            "0",
            "-m",
            "ast_model.train.step_bench",
            "--worker",
            str(out),
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--patch",
            str(args.patch),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
            "--zero",
            str(args.zero),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        results = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("result.*"))]
    return max(r["s_per_step"][0] for r in results), max(r["s_per_step"][1] for r in results)


def _threads(procs: int) -> int:
    """Threads per process when ``procs`` processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // procs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table, return the figures."""
    p = argparse.ArgumentParser(prog="python -m ast_model.train.step_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ast_t")
    p.add_argument("--batch", type=int, default=4, help="micro batch per process")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts for the scaling rows")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = engine_loop(args.model, args.batch, args.patch, args.warmup, args.steps, args.zero)
        Path(f"{args.worker}.{res['rank']}").write_text(json.dumps(res))
        return res

    def images(seconds: float, n: int) -> float:
        return n * args.batch / seconds

    plain = plain_loop(args.model, args.batch, args.patch, args.warmup, args.steps)
    rows = {"plain": plain}
    for n in args.procs:
        rows[f"engine x{n}"] = _run_procs(args, n, _threads(n))
    one = rows.get("engine x1")
    # Scaling is measured against one process with the threads each of the N processes gets (weak scaling
    # per process), not against one process using every core.
    for n in args.procs:
        if n > 1 and _threads(n) != _threads(1) and f"engine x1 {_threads(n)}t" not in rows:
            rows[f"engine x1 {_threads(n)}t"] = _run_procs(args, 1, _threads(n))
    print(
        f"{args.model} at {args.patch}x{args.patch}, micro batch {args.batch} per process, fp32, ZeRO {args.zero}, "
        f"{os.cpu_count()} cores, median of {args.steps} steps after {args.warmup}"
    )
    print(f"{'loop':<14}{'s/step':>9}{'min':>8}{'steps/s':>9}{'images/s':>10}   (steps/s, images/s from the median)")
    for name, (s, fastest) in rows.items():
        n = int(name.split("x")[1].split()[0]) if "x" in name else 1
        print(f"{name:<14}{s:>9.3f}{fastest:>8.3f}{1 / s:>9.3f}{images(s, n):>10.2f}")
    figures: dict[str, Any] = {"config": vars(args), "s_per_step_median_min": rows}
    if one:
        for k, label in ((0, "median"), (1, "min")):
            figures[f"engine_overhead_{label}"] = one[k] / plain[k] - 1
        print(
            f"engine overhead vs plain PyTorch: {figures['engine_overhead_median']:+.1%} (median), "
            f"{figures['engine_overhead_min']:+.1%} (min); target <= +10%"
        )
        for n in args.procs:
            if n > 1:
                for k, label in ((0, "median"), (1, "min")):
                    base = rows.get(f"engine x1 {_threads(n)}t", one)
                    eff = images(rows[f"engine x{n}"][k], n) / (n * images(base[k], 1))
                    figures[f"scaling_efficiency_x{n}_{label}"] = eff
                speedup = images(rows[f"engine x{n}"][0], n) / images(one[0], 1)
                figures[f"speedup_same_cores_x{n}"] = speedup
                print(
                    f"scaling efficiency 1 -> {n} processes: {figures[f'scaling_efficiency_x{n}_median']:.0%} "
                    f"(median), {figures[f'scaling_efficiency_x{n}_min']:.0%} (min); images/s vs one process "
                    f"on all cores: x{speedup:.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
