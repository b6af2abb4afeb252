"""Benchmark the data path: training-loader pairs/s and shard-writing MB/s.

``python -m ast_model.data.loader_bench`` generates embedded pairs large enough for 256x256 crops into a temporary
folder (or reads ``--shards DIR``), then measures

* shard writing: :func:`ast_model.data.shards.write_split` of in-memory PNG pairs, tar + sha256 (MB/s);
* the training loader: decode + paired crop + dihedral transform + batching, at 128 and 256 pixel
  patches with 0, 1 and 2 workers (pairs/s after the first batch, so worker start-up is reported apart).

Each figure is the median of ``--repeats`` runs; the table also shows how many times faster than a
training step consumes pairs the loader is (``--consume``, pairs/s a training step uses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ast_model.data.config import EmbeddedConfig
from ast_model.data.embedded import generate_split
from ast_model.data.files import encode_png
from ast_model.data.loaders import make_train_loader
from ast_model.data.shards import ShardSample, write_split


def make_samples(n_photos: int, variants: int, short_side: int, seed: int = 0) -> list[ShardSample]:
    """Embedded rain pairs held in memory as PNG bytes.

    Args:
        n_photos: how many of the default training photos to use.
        variants: pairs per photo.
        short_side: image short side (>= the largest benchmarked patch).
        seed: generation seed.

    Returns:
        The samples.
    """
    base = EmbeddedConfig()
    cfg = dataclasses.replace(
        base,
        seed=seed,
        short_side=short_side,
        photos={"train": base.photos["train"][:n_photos]},
        variants={"train": variants},
    )
    return [
        ShardSample(
            p.key, encode_png(p.input), encode_png(p.target), {"width": p.input.shape[1], "height": p.input.shape[0]}
        )
        for p in generate_split("rain", "train", cfg)
    ]


def bench_write(samples: list[ShardSample], folder: Path, n_shards: int, repeats: int) -> list[float]:
    """Shard-writing throughput.

    Args:
        samples: what to write.
        folder: scratch folder.
        n_shards: shards per write.
        repeats: runs.

    Returns:
        MB/s of each run (MB = 1e6 bytes of tar written).
    """
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        index = write_split(folder / f"write{r}", samples, lambda s: s, n_shards=n_shards, info={})
        rates.append(index["bytes"] / 1e6 / (time.perf_counter() - start))
    return rates


def bench_loader(
    shard_dir: Path, patch: int, workers: int, batch: int, batches: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Training-loader throughput.

    Args:
        shard_dir: a split folder.
        patch: crop size.
        workers: DataLoader workers.
        batch: batch size.
        batches: batches per measured epoch (the first one is excluded from the rate).
        repeats: runs (each a fresh epoch, so worker start-up is paid every time).

    Returns:
        ``(pairs/s after the first batch, seconds to the first batch)`` per run.
    """
    rates, startups = [], []
    for r in range(repeats):
        loader = make_train_loader(
            shard_dir,
            patch_size=patch,
            batch_size=batch,
            batches_per_epoch=batches,
            num_workers=workers,
            seed=r,
            rank=0,
            world_size=1,
            verify=False,
        )
        start = time.perf_counter()
        first = None
        for i, _ in enumerate(loader):
            if i == 0:
                first = time.perf_counter()
        end = time.perf_counter()
        if first is None:
            raise ValueError(f"the loader yielded no batch (batches={batches})")
        startups.append(first - start)
        rates.append((batches - 1) * batch / (end - first))
    return rates, startups


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m ast_model.data.loader_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, help="benchmark an existing split folder instead of generated pairs")
    parser.add_argument("--patches", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16, help="batches per measured epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--consume",
        type=float,
        default=4.0,
        help="pairs/s a training step consumes, for the ratio column (AST-T, batch 4 at 128^2, "
        "~1-2 s/step on a 2-core CPU: 2-4 pairs/s)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="ast-data-bench-") as tmp:
        scratch = Path(tmp)
        if args.shards is None:
            start = time.perf_counter()
            samples = make_samples(n_photos=4, variants=6, short_side=max(args.patches) + 32)
            print(
                f"generated {len(samples)} pairs of ~{samples[0].meta['height']}x{samples[0].meta['width']} "
                f"in {time.perf_counter() - start:.1f} s"
            )
            rates = bench_write(samples, scratch, n_shards=4, repeats=args.repeats)
            results["write_mb_s"] = rates
            print(
                f"shard writing: {statistics.median(rates):.0f} MB/s (median of {len(rates)}; "
                f"{min(rates):.0f}-{max(rates):.0f})"
            )
            shard_dir = scratch / "write0"
        else:
            shard_dir = args.shards
        print(f"\n{'patch':>5} {'workers':>7} {'pairs/s':>8} {'range':>13} {'start s':>7} {'x need':>7}")
        for patch in args.patches:
            for workers in args.workers:
                rates, startups = bench_loader(shard_dir, patch, workers, args.batch, args.batches, args.repeats)
                med = statistics.median(rates)
                results[f"loader_{patch}_w{workers}"] = {"pairs_s": rates, "startup_s": startups}
                print(
                    f"{patch:>5} {workers:>7} {med:>8.1f} {min(rates):>6.1f}-{max(rates):<6.1f} "
                    f"{statistics.median(startups):>7.2f} {med / args.consume:>6.0f}x"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
