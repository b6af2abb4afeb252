"""``make run``: the whole pipeline on the embedded default (``dvc repro``), then a short report.

``dvc repro`` runs every stage of ``dvc.yaml`` whose inputs changed (data -> shards -> training ->
evaluation -> registry); a second call with nothing changed runs nothing. DVC starts each stage's
``python`` from ``PATH``, so this puts the interpreter running it (the project's virtualenv) first.
Then it prints what a person wants to see first: per task, the degraded input's and the restored test
PSNR/SSIM, whether the embedded default's floor (+3 dB and a higher SSIM) is met, the registered version
and whether it became champion, where the sample grids and the learning-curve page are, and the command
that opens the MLflow UI on these runs.

DVC runs one stage at a time. The ablation variants of the paper tables (``ablation@<variant>``, docs/tables.md)
are many small independent trainings that cannot keep several cores busy each, so ``make run`` reproduces in
three steps: the tasks (``dvc repro register``), then the ablation stages side by side
(:mod:`pipelines.side_by_side`), then ``dvc repro`` of the rest (the tables). The result, ``dvc.lock``
included, is what a plain ``dvc repro`` gives.

    python -m pipelines.run [--params params.yaml] [--no-repro]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ast_model.config import read_params


def pipeline_env(root: Path) -> dict[str, str]:
    """Environment for DVC and the stages: this interpreter first on PATH, no analytics, local caches."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DVC_SITE_CACHE_DIR", str(root / ".cache" / "dvc-site"))  # else /var/tmp/dvc
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def dvc_executable() -> str:
    """The ``dvc`` beside this interpreter (the project's virtualenv), else the one on PATH."""
    dvc = Path(sys.executable).parent / "dvc"
    return str(dvc) if dvc.exists() else "dvc"


def repro(root: Path, targets: Sequence[str] = ()) -> int:
    """Run ``dvc repro [targets]`` in ``root``; returns DVC's exit status (the failing stage has said why above)."""
    cmd = [dvc_executable(), "repro", *targets]
    print("$", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=root, env=pipeline_env(root))
    if status:
        print(f"make run: dvc repro failed with status {status} (the stage's message is above)", file=sys.stderr)
    return status


def reproduce_all(root: Path) -> int:
    """Everything ``dvc repro`` reproduces, with the ablation stages side by side on a multi-core machine."""
    from pipelines.side_by_side import (
        SIDE_BY_SIDE_GROUP,
        group_stages,
        side_by_side,
        side_by_side_workers,
        stale_stages,
    )

    stages = group_stages(root, SIDE_BY_SIDE_GROUP)
    if stages:
        status = repro(root, ["register"])  # the tasks first (and the shards the ablation stages read)
        if status:
            return status
        stages = stale_stages(root, stages)
    workers = side_by_side_workers(len(stages))
    if workers > 1:
        status = side_by_side(root, stages, workers)
        if status:
            return status
    return repro(root)


FLOOR_DB = 3.0  # the embedded default's promise: each task beats its degraded input by this much, SSIM too


def plots_html(root: Path) -> Path | None:
    """``dvc plots show``: the learning curves of dvc.yaml's ``plots`` as one HTML page (None: it failed)."""
    out = root / "dvc_plots"
    status = subprocess.call(
        [dvc_executable(), "plots", "show", "-o", str(out)],
        cwd=root,
        env=pipeline_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    page = out / "index.html"
    return page if status == 0 and page.is_file() else None


def summary(root: Path, params: dict) -> tuple[str, bool]:
    """The report a person reads after ``make run``: per task, input -> restored PSNR/SSIM and the registry.

    Returns:
        ``(text, every task met the floor)``.
    """
    from ast_model.artifacts import EvaluationMetrics
    from pipelines.gate import RegistryRecord
    from pipelines.params import load_tasks

    tasks, _ = load_tasks(params)
    lines = [f"{'task':9} {'input PSNR/SSIM':>17} -> {'restored':>15} {'gain':>16}  floor  registry", "-" * 96]
    ok = bool(tasks)
    for task in tasks:
        try:
            m = EvaluationMetrics.load(EvaluationMetrics.path(root / "metrics", task))
        except (FileNotFoundError, ValueError) as exc:
            lines.append(f"{task:9} (no metrics: {exc})")
            ok = False
            continue
        met = m.gain_psnr >= FLOOR_DB and m.gain_ssim > 0
        ok &= met
        try:
            r = RegistryRecord.load(RegistryRecord.path(root / "reports", task))
            reg = f"{r.registered_model} v{r.version} " + (
                "champion" if r.promoted else f"challenger (champion v{r.champion_version})"
            )
        except (FileNotFoundError, ValueError):
            reg = "not registered"
        lines.append(
            f"{task:9} {m.input_psnr:7.2f} dB {m.input_ssim:.3f} -> {m.psnr:6.2f} dB {m.ssim:.3f} "
            f"{m.gain_psnr:+6.2f} dB {m.gain_ssim:+.3f}  {'yes' if met else 'NO ':5}  {reg}"
        )
    lines.append(
        f"floor: every task >= +{FLOOR_DB:g} dB PSNR and a higher SSIM than its degraded input "
        f"(test split): {'met' if ok else 'NOT met'}"
    )
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make run``.

    Before ``dvc repro`` starts anything, the tracking store is probed (a dead ``MLFLOW_TRACKING_URI``
    stops here in one line, not after the data stages); each stage then does its own pre-flight and
    reports in the same style. Exit status 2: a problem to fix; DVC's status otherwise.
    """
    from pipelines.errors import PreflightError, run_cli
    from pipelines.tracking import tracking_problem, tracking_uri, use_local_store

    ap = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-repro", action="store_true", help="only the report (after an earlier repro)")
    ap.add_argument(
        "--local-store",
        action="store_true",
        help="log to the local store (<repo>/mlflow.db) even if MLFLOW_TRACKING_URI is set",
    )
    ap.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    args = ap.parse_args(argv)
    root = Path.cwd()
    if args.local_store:
        use_local_store(root)  # the stages DVC starts inherit it

    def body() -> int:
        if not args.no_repro:
            problem = tracking_problem()
            if problem:
                raise PreflightError(problem)
            status = reproduce_all(root)
            if status:
                return status
        params = read_params(root / args.params)
        text, _ = summary(root, params)
        page = plots_html(root)
        print("\n" + text)
        print("sample grids  reports/<task>/samples/*.png  (input | restored | target)")
        print(
            f"curves        {page.relative_to(root) if page else '(dvc plots show failed)'}  (open in a browser; "
            "`dvc plots show` redraws it)"
        )
        print("metrics       dvc metrics show   |   experiments: dvc exp show")
        numbers = sorted(int(p.stem[5:]) for p in (root / "reports").glob("table*.md") if p.stem[5:].isdigit())
        if numbers:  # the paper-table stages (docs/tables.md); MLflow experiment `paper-tables`
            print(f"paper tables  reports/table{numbers[0]}..{numbers[-1]}.md (+ .csv), reports/figure4.png")
        uri = tracking_uri()
        if uri.startswith(("http://", "https://")):
            print(f"MLflow UI     {uri}")
        else:
            print(
                f"MLflow UI     {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri} --port 5000"
                "   (then http://127.0.0.1:5000)"
            )
        return 0

    return run_cli("make run", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
