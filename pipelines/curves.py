"""Learning curves: PSNR / SSIM gain over the degraded input against training steps, per task.

Every training run writes ``models/<experiment>/history.csv`` (one row per validation: step, images,
training seconds, train loss, PSNR / SSIM of the restored and of the degraded input, and the gains).
This copies the histories of several runs, one per task, into ``<out>/<task>.csv`` (the files dvc.yaml's
``plots:`` section draws, one line per task) and draws ``<out>/learning_curves.png`` for a person (PSNR
gain and SSIM gain panels).

To measure curves on the *test* split, train with ``validation.split: test`` (the default pipeline
validates on ``val``); docs/training.md has the commands.

    python -m pipelines.curves --run rain=models/curve-rain/history.csv --run haze=... --out reports/learning_curves
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from ast_model.data.files import atomic_write_bytes
from ast_model.train.history import read_history, write_history


def plot(runs: dict[str, list[dict[str, float]]], path: str | Path, *, title: str = "") -> Path:
    """PSNR gain (dB) and SSIM gain against steps, one line per task, written atomically as PNG."""
    # A bare Figure renders with Agg and touches no global state (no pyplot, no backend switch).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), constrained_layout=True)
    axes = fig.subplots(1, 2)
    for task, rows in runs.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r["gain_psnr_db"] for r in rows], marker="o", label=task)
        axes[1].plot(steps, [r["gain_ssim"] for r in rows], marker="o", label=task)
    for ax, label in zip(axes, ("PSNR gain over input (dB)", "SSIM gain over input"), strict=True):
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(3.0, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for a missing or malformed history)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="TASK=HISTORY.csv",
        help="a task name and its run's history.csv (repeat per task)",
    )
    parser.add_argument(
        "--out", default="reports/learning_curves", help="output folder (<task>.csv, learning_curves.png)"
    )
    parser.add_argument("--title", default="", help="caption above the plot (data, budget, machine)")
    args = parser.parse_args(argv)
    runs = {}
    try:
        for item in args.run:
            task, sep, path = item.partition("=")
            if not sep or not task:
                raise ValueError(f"--run {item!r}: expected TASK=PATH")
            runs[task] = read_history(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"curves: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task, rows in runs.items():
        write_history(rows, out / f"{task}.csv")  # the history format: what dvc.yaml's plots read
    plot(runs, out / "learning_curves.png", title=args.title)
    for task, rows in runs.items():
        last = rows[-1] if rows else None
        if last:
            print(
                f"{task}: step {int(last['step'])}: PSNR {last['input_psnr']:.2f} -> {last['val_psnr']:.2f} dB "
                f"({last['gain_psnr_db']:+.2f}), SSIM {last['input_ssim']:.4f} -> {last['val_ssim']:.4f}"
            )
    print(f"curves: {out}/{{{','.join(runs)}}}.csv, {out / 'learning_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
