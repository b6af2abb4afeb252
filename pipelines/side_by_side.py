"""DVC stages side by side: ``make run`` and the Prefect flow reproduce the ablation stages several at a time.

DVC runs one stage at a time. The ablation variants of the paper tables (``ablation@<variant>``, docs/tables.md)
are many small independent trainings that cannot keep several cores busy each, so both entry points run them
as ``dvc --wait-for-lock repro --single-item ablation@<variant>``, one per core (at most 4), each with its
share of the cores (DVC holds its repository lock only while it reads the pipeline and records a result). The
result, ``dvc.lock`` included, is what ``dvc repro`` gives, up to float summation order (the thread count
differs): the scores agree to ~1e-9 dB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.run import dvc_executable, pipeline_env

SIDE_BY_SIDE_GROUP = "ablation"  # the foreach stages make run reproduces several at a time
MAX_SIDE_BY_SIDE = 4
LOG_DIR = Path("checkpoints") / "logs"  # one log per stage run side by side (ignored by git)


def group_stages(root: Path, group: str) -> list[str]:
    """The stages ``<group>@<key>`` of ``dvc.yaml`` (a ``foreach`` group), in file order (``dvc stage list``)."""
    out = subprocess.run(
        [dvc_executable(), "stage", "list", "--name-only"],
        cwd=root,
        env=pipeline_env(root),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        from pipelines.errors import PreflightError

        raise PreflightError(f"dvc stage list failed: {out.stderr.strip()}", source=str(root / "dvc.yaml"))
    return [name for name in out.stdout.split() if name.startswith(f"{group}@")]


def side_by_side_threads(workers: int) -> int:
    """Threads of each of ``workers`` stages running at once: an equal share of the cores."""
    from ast_model.runtime import cpu_count

    return max(1, cpu_count() // workers)


def side_by_side(root: Path, stages: Sequence[str], workers: int, *, poll_s: float = 0.5) -> int:
    """Reproduce ``stages`` (independent of each other) ``workers`` at a time; returns the first failure's status.

    Each runs as ``dvc --wait-for-lock repro --single-item <stage>`` (DVC holds its repository lock only while
    it reads the pipeline and records a result, so the waits are short) with ``cores // workers`` threads,
    its output in ``checkpoints/logs/<stage>.log``; one line per finished stage here. After a failure no
    further stage starts, the running ones finish, and the failed stage's last log lines are printed.
    """
    from pipelines.tracking import create_local_store

    create_local_store(root)  # before the stages start: they would race to create a new store's tables
    threads = side_by_side_threads(workers)
    env = {**pipeline_env(root), "OMP_NUM_THREADS": str(threads)}
    logs = root / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"make run: {len(stages)} {SIDE_BY_SIDE_GROUP} stages, {workers} at a time with {threads} thread(s) each "
        f"(logs: {LOG_DIR}/<stage>.log)",
        flush=True,
    )
    pending = list(stages)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: list[tuple[str, int]] = []
    done = 0
    while pending or running:
        while pending and len(running) < workers and not failed:
            stage = pending.pop(0)
            with (logs / f"{stage}.log").open("w") as log:  # the child keeps its own descriptor
                proc = subprocess.Popen(
                    [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage],
                    cwd=root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            running[stage] = (proc, time.monotonic())
        if failed and not running:
            break
        time.sleep(poll_s)
        for stage, (proc, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[stage]
            done += 1
            took = time.monotonic() - start
            if proc.returncode:
                failed.append((stage, proc.returncode))
                print(
                    f"[{done}/{len(stages)}] {stage}: FAILED (status {proc.returncode}) after {took:.0f} s", flush=True
                )
            else:
                print(f"[{done}/{len(stages)}] {stage}: done in {took:.0f} s", flush=True)
    if not failed:
        return 0
    stage, status = failed[0]
    tail = (logs / f"{stage}.log").read_text(errors="replace").splitlines()[-30:]
    print("\n".join(tail), file=sys.stderr)
    print(
        f"make run: {stage} failed with status {status} (its output: {LOG_DIR / (stage + '.log')}; last lines above)",
        file=sys.stderr,
    )
    return status


def side_by_side_workers(stages: int) -> int:
    """How many ablation stages run at once: one per core, at most 4; one on a GPU machine."""
    import torch

    from ast_model.runtime import cpu_count

    if torch.cuda.is_available():  # the stages train on the GPU: they would share it, not split the cores
        return 1
    return max(1, min(cpu_count(), MAX_SIDE_BY_SIDE, stages))


def stale_stages(root: Path, stages: Sequence[str]) -> list[str]:
    """The ``stages`` that ``dvc status`` reports as changed (all of them if the status cannot be read)."""
    cmd = [dvc_executable(), "status", "--json", *stages]
    out = subprocess.run(cmd, cwd=root, env=pipeline_env(root), capture_output=True, text=True)
    try:
        changed = json.loads(out.stdout or "{}") if out.returncode == 0 else None
    except json.JSONDecodeError:
        changed = None
    return list(stages) if changed is None else [s for s in stages if s in changed]
