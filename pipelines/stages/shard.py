"""DVC stage ``shard``: prepared datasets into WebDataset shards ``data/shards/<name>/<split>/``.

Each split gets ``shard-NNNNNN.tar`` files (``<key>.input.png``, ``<key>.target.png``, ``<key>.json``) and
an ``index.json`` (samples, bytes and sha256 per shard). The ``train`` split gets at least
``data.max_nodes x data.max_procs_per_node x data.max_workers`` shards, so every reader of the largest
configured run has its own; with fewer samples than that the stage fails before writing anything.

Usage: ``python -m pipelines.stages.shard [--params params.yaml] [--prepared data/prepared] [--out data/shards]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ast_model.config import ConfigError, load_section
from ast_model.data.build import clean_staging, plan_dataset, shard_dataset
from ast_model.data.config import DataConfig, ShardConfig
from ast_model.data.shards import ShardError


def run(
    params: str | Path = "params.yaml", prepared: str | Path = "data/prepared", out: str | Path = "data/shards"
) -> dict[str, dict[str, Any]]:
    """Shard every configured dataset.

    Args:
        params: the params file (sections ``data`` and ``shard``).
        prepared: the prepare stage's output root.
        out: the output root.

    Returns:
        dataset -> split -> ``{"samples", "shards", "bytes"}``.

    Raises:
        ConfigError: a bad params section.
        ManifestError: a missing manifest, or a real file changed since prepare.
        ShardError: too few samples for the required shard count.
    """
    data = load_section(DataConfig, params, "data")
    cfg = load_section(ShardConfig, params, "shard")
    out = Path(out)
    from ast_model.preflight import output_dir_problem

    problem = output_dir_problem(out, "output folder (--out)")
    if problem:
        raise ConfigError(problem)
    # Plan every dataset first: a shard-count problem anywhere stops the stage before it writes anything.
    plans, problems = {}, []
    for name in data.datasets:
        plans[name], errors = plan_dataset(name, Path(prepared), data, cfg)
        problems += errors
    if problems:  # one per line: the command lists them under a counted header
        raise ShardError("\n".join(problems))
    clean_staging(out)
    summary = {}
    for name in data.datasets:
        start = time.perf_counter()
        summary[name] = shard_dataset(name, plans[name], out)
        mb = sum(s["bytes"] for s in summary[name].values()) / 1e6
        splits = ", ".join(f"{split} {s['samples']} in {s['shards']}" for split, s in summary[name].items())
        print(f"shard: {name}: {splits} shards, {mb:.1f} MB in {time.perf_counter() - start:.1f} s")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a config or data problem (message on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m pipelines.stages.shard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--prepared", default="data/prepared", help="prepare's output root (default: %(default)s)")
    parser.add_argument("--out", default="data/shards", help="output root (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    from pipelines.errors import run_cli

    return run_cli(
        "shard", lambda: run(args.params, args.prepared, args.out) and 0, debug=args.debug, outcome="nothing written"
    )


if __name__ == "__main__":
    sys.exit(main())
