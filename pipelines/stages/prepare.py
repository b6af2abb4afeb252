"""DVC stage ``prepare``: every dataset of ``params.yaml: data.datasets`` into ``data/prepared/<name>/<split>/``.

The embedded default is generated (PNG pairs + manifest). A real dataset is read from its folder on disk,
every pair is checked (missing partner, unreadable file, odd channels, size mismatch) and only a manifest
is written: the images are not copied. All real datasets are checked before anything is written, and
every problem of every dataset is reported in one error.

Usage: ``python -m pipelines.stages.prepare [--params params.yaml] [--out data/prepared]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ast_model.config import ConfigError, load_section
from ast_model.data.build import check_real_dataset, clean_staging, prepare_embedded, prepare_real
from ast_model.data.config import DataConfig, PrepareConfig
from ast_model.data.sources import SourceError


def run(params: str | Path = "params.yaml", out: str | Path = "data/prepared") -> dict[str, dict[str, int]]:
    """Prepare every configured dataset.

    Args:
        params: the params file (sections ``data`` and ``prepare``).
        out: the output root.

    Returns:
        dataset -> split -> number of pairs.

    Raises:
        ConfigError: a bad params section.
        SourceError: real datasets with problems (all of them listed; nothing written).
    """
    from ast_model.preflight import output_dir_problem

    data = load_section(DataConfig, params, "data")
    cfg = load_section(PrepareConfig, params, "prepare")
    out = Path(out)
    problem = output_dir_problem(out, "output folder (--out)")
    if problem:
        raise ConfigError(problem)
    checked, problems = {}, []
    for name, spec in data.datasets.items():
        if spec.source != "embedded":
            checked[name], errors = check_real_dataset(name, spec, check=cfg.check)
            problems += errors
    if problems:  # one flat list: every problem of every split of every dataset, each naming its files
        raise SourceError("prepare", problems)
    clean_staging(out)
    summary = {}
    for name, spec in data.datasets.items():
        start = time.perf_counter()
        if spec.source == "embedded":
            summary[name] = prepare_embedded(name, spec, cfg.embedded, out)
        else:
            summary[name] = prepare_real(name, spec, checked[name], out)
        counts = ", ".join(f"{split} {n}" for split, n in summary[name].items())
        print(f"prepare: {name} ({spec.source}): {counts} pairs in {time.perf_counter() - start:.1f} s")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on a config or data problem (message on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m pipelines.stages.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--out", default="data/prepared", help="output root (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    from pipelines.errors import run_cli

    return run_cli("prepare", lambda: run(args.params, args.out) and 0, debug=args.debug, outcome="nothing written")


if __name__ == "__main__":
    sys.exit(main())
