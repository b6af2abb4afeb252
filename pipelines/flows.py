"""Prefect flows over the DVC pipeline: ``ast-pipeline`` (every stage, per task) and ``ast-train-node``.

Every Prefect task runs one DVC stage with ``dvc repro --single-item <stage>``: DVC runs exactly the stage's
command from ``dvc.yaml``, skips it when its deps and params are unchanged, caches its outputs and records
``dvc.lock``. A flow run therefore leaves the same outputs a ``dvc repro`` would, ``dvc status`` is clean
after it, and no stage logic exists here (docs/orchestration.md explains the choice)::

    prepare -> shard -> train[rain] -> evaluate[rain] -> register[rain]
                     -> train[raindrop] -> evaluate[raindrop] -> register[raindrop]
                     -> train[haze] -> ...
             then (``tables=True``, every task) -> ablation@<variant> ... -> table1 ... table10, figure4

Flow parameters override params keys (``overrides={"train.phases[0].lr": 5e-4}``). They are applied to
``params.yaml`` and checked by :func:`pipelines.params.check_params` before any task starts; a mistyped key
fails the flow run at once, naming the key, and is not retried. Valid overrides are written into
``params.yaml`` atomically (as ``dvc exp run -S`` does), so ``dvc.lock`` records what ran.

Training on several nodes (``nodes=N``): one launcher per node, all meeting at one torchrun rendezvous.
Node 0 is the DVC stage itself (``NNODES`` / ``NODE_RANK`` / ``MASTER_*`` in its environment, which the
train stage reads); nodes 1..N-1 run the same stage command with ``--node-rank`` either as local processes
(``node_runner="local"``: one machine, rendezvous on 127.0.0.1) or as runs of the ``ast-train-node``
deployment (``node_runner="deployment"``: a work pool puts them on other hosts). A failed training is
retried as a whole and resumes from ``checkpoints/<experiment>/``.

    python -m pipelines.flows [--task rain] [--nodes 2] [--set 'train.phases[0].lr=5e-4'] [--no-tables]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait
from prefect.states import Failed, State
from prefect.utilities.annotations import allow_failure

from pipelines.errors import EXIT_USER, PreflightError, format_error
from pipelines.params import write_overrides
from pipelines.run import dvc_executable

FLOW_NAME = "ast-pipeline"
NODE_FLOW_NAME = "ast-train-node"
PARAMS_FILE = "params.yaml"
ARTIFACT_KEY = "ast-pipeline-results"
TAIL_LINES = 40  # output lines kept for the error message of a failed stage
POLL_S = 1.0  # how often a multi-node training checks its nodes
STOP_GRACE_S = 20.0  # SIGTERM, then SIGKILL after this long
NODE_GRACE_S = 120.0  # after node 0 finished: how long the other nodes may take to exit
READER_JOIN_S = 5.0  # after a command ended: how long its last output lines may take to reach the log
# Progress bars redraw a few times a second; in a run log one line every 10 s is enough.
TQDM_MININTERVAL_S = "10"


class StageFailed(RuntimeError):
    """A stage command (or one node of a training) ended with a non-zero status.

    Attributes:
        what: the stage (``train@rain``) or node that failed.
        status: the stage command's own exit status when known (2: a problem the user fixes), else the
            launcher's or DVC's.
        tail: its last output lines.
    """

    def __init__(self, what: str, status: int, tail: Sequence[str] = ()) -> None:
        self.what, self.status, self.tail = what, int(status), list(tail)
        hint = " (a problem to fix: not retried)" if self.user_fixable else ""
        last = "\n".join(self.tail[-12:])
        super().__init__(f"{what} failed with exit status {status}{hint}" + (f"; last lines:\n{last}" if last else ""))

    def __reduce__(self) -> tuple:  # pickled with its fields (Prefect may serialise a task's exception)
        return (StageFailed, (self.what, self.status, self.tail))

    @property
    def user_fixable(self) -> bool:
        """Exit status 2 is the stages' "fix the config or data" status: retrying cannot help."""
        return self.status == EXIT_USER


def retry_unless_user_error(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry failures except a stage's exit status 2, pre-flight errors and
    failures of a run that is being cancelled or stopped."""
    if _TERMINATING.is_set():
        return False
    try:
        state.result()
    except StageFailed as exc:
        return not exc.user_fixable
    except PreflightError:
        return False
    except Exception:  # noqa: BLE001 - anything else (a killed process, a lost node) may pass on a retry
        return True
    return True


# ---------------------------------------------------------------------------------------------------------
# Parameters: overrides applied to params.yaml, validated before any work


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a flow run will do, decided before any task starts.

    Attributes:
        params: the full params after the overrides (what ``params.yaml`` holds when tasks run).
        tasks: the tasks (``tasks:`` section keys) to train, evaluate and register, in order.
        nodes: training nodes per task.
        changed: whether the overrides changed ``params.yaml``.
        table_stages: the paper-table stages to run after the tasks, in order (empty: ``tables=False``).
    """

    params: dict[str, Any]
    tasks: list[str]
    nodes: int
    changed: bool
    table_stages: list[str] = dataclasses.field(default_factory=list)


def plan_run(
    root: Path, tasks: Sequence[str] | None, overrides: Mapping[str, Any] | None, nodes: int, tables: bool = False
) -> RunPlan:
    """Apply ``overrides`` to ``<root>/params.yaml`` in memory and check everything; write nothing.

    Args:
        root: the repository (holds ``params.yaml`` and ``dvc.yaml``).
        tasks: task names (``tasks:`` keys); None or empty: all of them.
        overrides: dotted params keys -> values (``{"train.phases[0].lr": 5e-4}``).
        nodes: training nodes per task.
        tables: also run the paper-table stages (``ablation@<variant>``, ``table1`` ... ``figure4``) after the
            tasks; they need every task the tables score (``rain``, ``raindrop``, ``haze``) in this run.

    Returns:
        The plan.

    Raises:
        PreflightError: every problem found (unknown or mistyped keys, unknown tasks, a bad node count),
            each naming its key.
    """
    from ast_model.config import ConfigError
    from pipelines.params import apply_overrides, check_params, read_params

    source = str(root / PARAMS_FILE)
    current = read_params(source)
    try:
        params = apply_overrides(current, dict(overrides or {}))
    except (ConfigError, PreflightError) as exc:
        raise PreflightError(list(exc.problems), source=source) from None
    problems: list[str] = []
    try:
        check_params(params, source)
    except PreflightError as exc:
        problems += exc.problems
    known = list(params.get("tasks") or {})
    chosen = list(tasks) if tasks else known
    problems += [
        f"tasks={name!r}: no such task in {source} (tasks: {', '.join(known) or 'none'})"
        for name in chosen
        if name not in known
    ]
    if not chosen and not problems:
        problems.append(f"tasks: {source} defines no task to run")
    max_nodes = (params.get("data") or {}).get("max_nodes")
    if nodes < 1:
        problems.append(f"nodes={nodes}: must be >= 1")
    elif isinstance(max_nodes, int) and nodes > max_nodes:
        problems.append(
            f"nodes={nodes} exceeds data.max_nodes={max_nodes} (the shards are cut for at most that "
            "many nodes): raise data.max_nodes or use fewer nodes"
        )
    table_stages: list[str] = []
    if tables:
        from pipelines.tables import TABLES, TASK_OF

        needed = list(dict.fromkeys(TASK_OF.values()))  # rain, raindrop, haze
        missing = [name for name in needed if name not in chosen]
        if missing:
            problems.append(
                f"tables=true: the paper tables score the tasks {', '.join(needed)}, and this run does not "
                f"train {', '.join(missing)} (define them in tasks and run all of them, or pass tables=false)"
            )
        variants = ((params.get("tables") or {}).get("variants")) or {}
        table_stages = [f"ablation@{name}" for name in variants] + list(TABLES)
    if problems:
        raise PreflightError(problems, source=source)
    return RunPlan(params=params, tasks=chosen, nodes=nodes, changed=params != current, table_stages=table_stages)


def preflight(
    root: Path, tasks: Sequence[str] | None, overrides: Mapping[str, Any] | None, nodes: int, tables: bool
) -> RunPlan:
    """Everything checked before a flow run starts a task: :func:`plan_run`, then the tracking store.

    Raises:
        PreflightError: the problems, one line each (config problems all together, else the store's).
    """
    plan = plan_run(root, tasks, overrides, nodes, tables)
    check_tracking_store(root)  # a dead MLFLOW_TRACKING_URI: one line now, not after prepare and shard
    return plan


def check_tracking_store(root: Path) -> None:
    """Probe the tracking store the stages will log to (short timeout), before any task starts.

    Raises:
        PreflightError: one line naming the URI, why it cannot be used and how to run without it.
    """
    from pipelines.tracking import tracking_problem

    # The flow has no --local-store option: its stages use the local store when MLFLOW_TRACKING_URI is unset.
    problem = tracking_problem(local_store_hint="", root=root)
    if problem:
        raise PreflightError(problem)


# ---------------------------------------------------------------------------------------------------------
# Running commands with their output in the run log


def stage_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of DVC and the stage commands: the project's interpreter first on PATH, unbuffered output."""
    from pipelines.run import pipeline_env

    env = pipeline_env(root)
    env["PYTHONUNBUFFERED"] = "1"  # every line reaches the run log when it is printed
    env.setdefault("TQDM_MININTERVAL", TQDM_MININTERVAL_S)
    env.update(extra or {})
    return env


_LIVE: set[Proc] = set()  # commands running now, for the termination forwarding below
_TERMINATING = threading.Event()  # set once a termination signal was forwarded: nothing is retried then


def forward_termination() -> None:
    """On SIGTERM / SIGINT, pass the signal on to every running command's process group, then as before.

    The commands run in their own sessions (so one of them can be stopped without stopping the flow), which
    also means a worker that cancels the flow run reaches only the flow's process: without this, DVC and a
    training would go on as orphans. Installed from the main thread (no-op elsewhere); chains to the handler
    that was there (Prefect's, which turns the signal into the flow run's cancellation).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if getattr(previous, "_forwards_to_commands", False):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            _TERMINATING.set()
            for proc in list(_LIVE):
                proc.signal(signum)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        handler._forwards_to_commands = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)


class Proc:
    """A command in its own process group whose output lines go to a logger as they come.

    Args:
        cmd: the argv.
        cwd: working directory.
        env: environment.
        logger: where each line goes (``info``); a Prefect run logger may be used from the reader thread.
        prefix: put before each line (``[node 1] ``).
    """

    def __init__(self, cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str], logger: Any, prefix: str = "") -> None:
        self.cmd = list(cmd)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        logger.info("%s$ %s", prefix, shlex.join(self.cmd))
        # Own session: stopping it reaches DVC, the stage, the launcher and every worker it started.
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._pump, args=(logger, prefix), daemon=True)
        self._reader.start()

    def _pump(self, logger: Any, prefix: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # universal newlines: a progress bar's \r redraws are lines too
            line = line.rstrip()
            if line:
                self.tail.append(line)
                logger.info("%s%s", prefix, line)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group (no wait: safe in a signal handler)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def poll(self) -> int | None:
        """Exit status, or None while running (returns only once all its output has been logged)."""
        status = self.proc.poll()
        if status is not None:
            _LIVE.discard(self)
            # Bounded: a stray grandchild may keep the pipe open long after the command itself ended.
            self._reader.join(timeout=READER_JOIN_S)
        return status

    def wait(self) -> int:
        """Wait for the end; the exit status."""
        self.proc.wait()
        _LIVE.discard(self)
        self._reader.join(timeout=READER_JOIN_S)
        return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after a grace period."""
        if self.proc.poll() is not None:
            _LIVE.discard(self)
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        _LIVE.discard(self)
        self._reader.join(timeout=READER_JOIN_S)


def _dvc_stage_status(tail: Sequence[str], status: int) -> int:
    """The stage command's own exit status from DVC's last words (``..., exited with 2``), else DVC's."""
    for line in reversed(tail):
        found = re.search(r"exited with (-?\d+)", line)
        if found:
            return int(found.group(1))
    return status


def repro(root: Path, stage: str, *, env: Mapping[str, str] | None = None, logger: Any = None) -> bool:
    """``dvc repro --single-item <stage>`` in ``root``, its output in the run log.

    DVC releases its repository lock while the stage command runs and takes it again to record the result;
    ``--wait-for-lock`` makes it wait for that short lock instead of failing when another stage of the same
    flow is recording its own result at that moment.

    Returns:
        True if the stage ran, False if DVC found it up to date (or restored it from its run cache).

    Raises:
        StageFailed: DVC or the stage command failed (``status`` is the stage's own exit status).
    """
    logger = logger or get_run_logger()
    proc = Proc(
        [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage],
        cwd=root,
        env=stage_env(root, env),
        logger=logger,
    )
    try:
        status = proc.wait()
    finally:
        proc.stop()
    if status:
        raise StageFailed(stage, _dvc_stage_status(proc.tail, status), proc.tail)
    text = "\n".join(proc.tail)
    return not ("didn't change, skipping" in text or "is cached - skipping" in text)


def stage_command(root: Path, stage: str) -> list[str]:
    """The command DVC runs for ``stage`` (``dvc.yaml`` with ``foreach`` and params interpolated), as argv."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        found = repo.stage.collect(stage)
        if not found:
            raise PreflightError(f"dvc.yaml has no stage {stage!r}", source=str(root / "dvc.yaml"))
        cmd = found[0].cmd
    argv = shlex.split(cmd if isinstance(cmd, str) else " ".join(cmd))
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = sys.executable  # the interpreter DVC finds first on PATH (stage_env) is this one
    return argv


def up_to_date(root: Path, stage: str) -> bool:
    """``dvc status <stage>`` reports nothing: the stage's deps, params and outs match ``dvc.lock``."""
    out = subprocess.run(
        [dvc_executable(), "status", "--json", stage],
        cwd=root,
        env=stage_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode:
        return False
    try:
        return json.loads(out.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


# ---------------------------------------------------------------------------------------------------------
# Multi-node training


def node_args(nnodes: int, node_rank: int, master_addr: str, master_port: int) -> list[str]:
    """The train stage's options that make one launcher a node of an ``nnodes``-node rendezvous."""
    return [
        "--nnodes",
        str(nnodes),
        "--node-rank",
        str(node_rank),
        "--master-addr",
        master_addr,
        "--master-port",
        str(master_port),
    ]


def host_address() -> str:
    """This host's address as other hosts see it (a pod's IP on Kubernetes)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class DeploymentNode:
    """One node running as a flow run of the ``ast-train-node`` deployment (on whichever host its pool picks)."""

    def __init__(self, deployment: str, parameters: dict[str, Any], logger: Any) -> None:
        from prefect.deployments import run_deployment

        self.rank = parameters["node_rank"]
        # timeout=0: start it and return; the node's own run log has its output.
        self.run = run_deployment(
            deployment, parameters=parameters, timeout=0, flow_run_name=f"{parameters['task_name']}-node{self.rank}"
        )
        self.logger = logger
        self.tail: list[str] = []
        logger.info("[node %d] flow run %s of deployment %s", self.rank, self.run.name, deployment)

    def poll(self) -> int | None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.run.id).state
        if state is None or not state.is_final():
            return None
        if state.is_completed():
            return 0
        self.tail = [f"flow run {self.run.name}: {state.name}: {state.message or ''}"]
        found = re.search(r"exit status (-?\d+)", state.message or "")
        return int(found.group(1)) if found else 1

    def stop(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        if self.poll() is None:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    self.run.id, Cancelling(message="another node of the training failed"), force=True
                )


def train_nodes(
    root: Path,
    task_name: str,
    *,
    nodes: int,
    node_runner: str,
    node_deployment: str,
    master_addr: str | None,
    params: Mapping[str, Any],
    timeout_s: float,
    logger: Any,
) -> bool:
    """Train ``task_name`` on ``nodes`` nodes: node 0 through DVC, the others beside it; all or nothing.

    Returns:
        True if it trained, False if DVC found the stage up to date.

    Raises:
        StageFailed: a node failed (all others were stopped), or a node outlived node 0 by too long.
    """
    from ast_model.train.distributed import free_port

    stage = f"train@{task_name}"
    if nodes == 1:
        return repro(root, stage, logger=logger)
    if up_to_date(root, stage):  # else the other nodes would wait for a node 0 that DVC skips
        logger.info("%s is up to date: nothing to train", stage)
        return False
    local = node_runner == "local"
    addr = master_addr or ("127.0.0.1" if local else host_address())
    port = free_port()
    argv = stage_command(root, stage)
    logger.info("%s on %d nodes (%s), rendezvous %s:%d", stage, nodes, node_runner, addr, port)
    env0 = {"NNODES": str(nodes), "NODE_RANK": "0", "MASTER_ADDR": addr, "MASTER_PORT": str(port)}
    members: list[Any] = [
        Proc(
            [dvc_executable(), "--wait-for-lock", "repro", "--single-item", stage],
            cwd=root,
            env=stage_env(root, env0),
            logger=logger,
            prefix="[node 0] ",
        )
    ]
    try:
        for rank in range(1, nodes):
            if local:
                members.append(
                    Proc(
                        argv + node_args(nodes, rank, addr, port),
                        cwd=root,
                        env=stage_env(root),
                        logger=logger,
                        prefix=f"[node {rank}] ",
                    )
                )
            else:
                members.append(
                    DeploymentNode(
                        node_deployment,
                        {
                            "task_name": task_name,
                            "argv": argv,
                            "params": dict(params),
                            "nnodes": nodes,
                            "node_rank": rank,
                            "master_addr": addr,
                            "master_port": port,
                        },
                        logger,
                    )
                )
        _supervise(members, stage, timeout_s)
    finally:
        for member in members:
            member.stop()
    return True


def _supervise(members: list[Any], stage: str, timeout_s: float) -> None:
    """Wait for every node; the first failure stops the rest and raises (node 0's status is the stage's)."""
    deadline = time.monotonic() + timeout_s
    node0_done: float | None = None
    while True:
        statuses = [m.poll() for m in members]
        for rank, status in enumerate(statuses):
            if status:
                tail = list(getattr(members[rank], "tail", []))
                code = _dvc_stage_status(tail, status) if rank == 0 else status
                raise StageFailed(f"{stage} node {rank}", code, tail)
        if all(s == 0 for s in statuses):
            return
        now = time.monotonic()
        if statuses[0] == 0:
            node0_done = node0_done or now
            if now - node0_done > NODE_GRACE_S:
                raise StageFailed(f"{stage}: node 0 finished but other nodes still run after {NODE_GRACE_S:.0f} s", 1)
        if now > deadline:
            raise StageFailed(f"{stage}: nodes still running after {timeout_s:.0f} s (flow timeout)", 1)
        time.sleep(POLL_S)


# ---------------------------------------------------------------------------------------------------------
# Tasks: one DVC stage each (the retries of a stage are safe: its outputs are written atomically, and a
# training resumes from its checkpoints)


@task(
    name="prepare", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE
)
def prepare_task(root: str) -> bool:
    """DVC stage ``prepare``: every dataset of ``data.datasets`` into ``data/prepared/``."""
    return repro(Path(root), "prepare")


@task(name="shard", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE)
def shard_task(root: str) -> bool:
    """DVC stage ``shard``: the prepared datasets into WebDataset shards ``data/shards/``."""
    return repro(Path(root), "shard")


@task(
    name="train",
    task_run_name="train[{task_name}]",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def train_task(
    root: str,
    task_name: str,
    nodes: int = 1,
    node_runner: str = "local",
    node_deployment: str = f"{NODE_FLOW_NAME}/local",
    master_addr: str | None = None,
    params: dict[str, Any] | None = None,
    timeout_s: float = 24 * 3600,
) -> bool:
    """DVC stage ``train@<task>`` on ``nodes`` nodes. A retry resumes from ``checkpoints/<experiment>/``."""
    return train_nodes(
        Path(root),
        task_name,
        nodes=nodes,
        node_runner=node_runner,
        node_deployment=node_deployment,
        master_addr=master_addr,
        params=params or {},
        timeout_s=timeout_s,
        logger=get_run_logger(),
    )


@task(
    name="evaluate",
    task_run_name="evaluate[{task_name}]",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def evaluate_task(root: str, task_name: str) -> bool:
    """DVC stage ``evaluate@<task>``: test-split PSNR/SSIM into ``metrics/<task>.json``, sample grids."""
    return repro(Path(root), f"evaluate@{task_name}")


# Not retried automatically: a register that failed after MLflow created the version would register a
# second one. Its output (reports/<task>/registry.json) is then missing, so the next run (Prefect or DVC)
# registers again, once.
@task(name="register", task_run_name="register[{task_name}]", retries=0, cache_policy=NO_CACHE)
def register_task(root: str, task_name: str) -> bool:
    """DVC stage ``register@<task>``: a new registered model version; champion only if it wins."""
    return repro(Path(root), f"register@{task_name}")


@task(
    name="table",
    task_run_name="{stage}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def table_stage_task(root: str, stage: str, env: dict[str, str] | None = None) -> bool:
    """DVC stage ``ablation@<variant>`` (trains and scores one variant) or ``tableN`` / ``figure4`` (writes it)."""
    return repro(Path(root), stage, env=env)


def run_table_stages(root: str, stages: Sequence[str]) -> tuple[list[str], list[PrefectFuture]]:
    """The ablation stages side by side as ``make run`` runs them (pipelines.side_by_side), then the tables in order.

    No stage starts after a failure; the running ones finish.

    Returns:
        The stages that completed, and the futures of those that failed.
    """
    from pipelines.side_by_side import SIDE_BY_SIDE_GROUP, side_by_side_threads, side_by_side_workers

    group = [s for s in stages if s.startswith(f"{SIDE_BY_SIDE_GROUP}@")]
    rest = [s for s in stages if s not in group]
    workers = side_by_side_workers(len(group))
    env = {"OMP_NUM_THREADS": str(side_by_side_threads(workers))} if workers > 1 else None
    if workers > 1:
        from pipelines.tracking import create_local_store

        create_local_store(Path(root))  # the stages would race to create a new store's tables
    done: list[str] = []
    failures: list[PrefectFuture] = []

    def in_windows(names: Sequence[str], window: int, stage_env: dict[str, str] | None) -> None:
        """Run ``names`` at most ``window`` at a time; none starts once any stage has failed."""
        queue = list(names)
        running: list[tuple[str, PrefectFuture]] = []
        while running or (queue and not failures):
            while queue and not failures and len(running) < window:
                stage = queue.pop(0)
                running.append((stage, table_stage_task.submit(root, stage, stage_env)))
            finished = wait([f for _, f in running], timeout=POLL_S).done
            for stage, future in [(s, f) for s, f in running if f in finished]:
                running.remove((stage, future))
                future.wait()  # done here can precede the final state the task run reports
                if future.state.is_completed():
                    done.append(stage)
                else:
                    failures.append(future)

    in_windows(group, workers, env)
    in_windows(rest, 1, None)  # the tables read every ablation record: one after another, after the group
    return done, failures


# ---------------------------------------------------------------------------------------------------------
# The results artifact


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """One task's outcome, read back from its stage outputs (None: that stage has not produced it)."""

    task: str
    metrics: Any  # ast_model.artifacts.EvaluationMetrics | None (metrics/<task>.json)
    registry: Any  # pipelines.gate.RegistryRecord | None (reports/<task>/registry.json)
    status: str  # "ok" or the first task run that did not complete

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the scores (without per-image rows) and the registry record."""
        metrics = dataclasses.asdict(self.metrics) if self.metrics else None
        if metrics:
            metrics.pop("per_image", None)
        return {
            "task": self.task,
            "status": self.status,
            "metrics": metrics,
            "registry": dataclasses.asdict(self.registry) if self.registry else None,
        }


def results_of(root: Path, task_name: str, status: str = "ok") -> TaskResult:
    """The task's ``metrics/<task>.json`` and ``reports/<task>/registry.json`` (absent or unreadable: None)."""
    from ast_model.artifacts import EvaluationMetrics
    from ast_model.config import ConfigError
    from pipelines.gate import RegistryRecord

    loaded = []
    for cls, path in (
        (EvaluationMetrics, EvaluationMetrics.path(root / "metrics", task_name)),
        (RegistryRecord, RegistryRecord.path(root / "reports", task_name)),
    ):
        try:
            loaded.append(cls.load(path))
        except (FileNotFoundError, ConfigError):
            loaded.append(None)
    return TaskResult(task_name, loaded[0], loaded[1], status)


def _mlflow_links(uri: str, run_ids: Sequence[str]) -> dict[str, str]:
    """run id -> UI URL of the run (http stores only; the experiment id is asked from the store)."""
    if not uri.startswith(("http://", "https://")):
        return {}
    links = {}
    try:
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        for run_id in run_ids:
            exp = client.get_run(run_id).info.experiment_id
            links[run_id] = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    except Exception:  # noqa: BLE001 - links are a convenience; the table is written without them
        pass
    return links


def results_markdown(root: Path, results: Sequence[TaskResult], tables: Sequence[str] = ()) -> str:
    """The flow run's results table: input -> restored PSNR/SSIM, registered version, champion, MLflow links.

    ``tables``: the paper-table stages this run completed (their report files are listed below the table).
    """
    from pipelines.run import FLOOR_DB
    from pipelines.tracking import tracking_uri

    uri = tracking_uri(root)
    http = uri.startswith(("http://", "https://"))
    links = _mlflow_links(uri, [r.metrics.tracking_run_id for r in results if r.metrics and r.metrics.tracking_run_id])
    rows = [
        "| task | dataset | PSNR input → restored (dB) | SSIM input → restored | floor | registered | champion "
        "| MLflow run | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, g = r.metrics, r.registry
        psnr = f"{m.input_psnr:.2f} → **{m.psnr:.2f}** ({m.gain_psnr:+.2f})" if m else "–"
        ssim = f"{m.input_ssim:.4f} → **{m.ssim:.4f}** ({m.gain_ssim:+.4f})" if m else "–"
        floor = ("yes" if m.gain_psnr >= FLOOR_DB and m.gain_ssim > 0 else "no") if m else "–"
        version = "–"
        if g:
            version = f"{g.registered_model} v{g.version}"
            if http:
                version = f"[{version}]({uri.rstrip('/')}/#/models/{g.registered_model}/versions/{g.version})"
        champion = ("yes" if g.promoted else f"no (champion: v{g.champion_version})") if g else "–"
        run_id = m.tracking_run_id if m else None
        run = f"[{run_id[:8]}]({links[run_id]})" if run_id in links else (f"`{run_id}`" if run_id else "–")
        rows.append(
            f"| {r.task} | {m.dataset if m else '–'} | {psnr} | {ssim} | {floor} | {version} | {champion} "
            f"| {run} | {r.status} |"
        )
    lines = [
        f"# {FLOW_NAME}: results",
        "",
        *rows,
        "",
        f"Test split; floor: +{FLOOR_DB:g} dB PSNR and a higher SSIM than the degraded input. Tracking store `{uri}`.",
    ]
    if not http:
        lines.append(f"Open the runs with `mlflow ui --backend-store-uri {uri}`.")
    written = [f"`reports/{t}.md`" for t in tables if not t.startswith("ablation@")]
    if written:
        lines += ["", f"Paper tables (MLflow experiment `paper-tables`): {', '.join(written)}."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Flows


@flow(name=FLOW_NAME, log_prints=True)
def ast_pipeline(
    tasks: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    nodes: int = 1,
    node_runner: Literal["local", "deployment"] = "local",
    node_deployment: str = f"{NODE_FLOW_NAME}/local",
    master_addr: str | None = None,
    max_parallel_tasks: int = 1,
    tables: bool = True,
    root: str | None = None,
) -> dict[str, Any] | State:
    """The whole pipeline: prepare -> shard -> per task: train -> evaluate -> register, then the paper tables.

    Args:
        tasks: task names of ``params.yaml: tasks`` to run (None: all). ``dvc status`` is clean after the
            run only when every task ran and ``tables`` is true.
        overrides: dotted params keys -> values, checked before any work and then written into
            ``params.yaml`` (``{"train.phases[0].lr": 5e-4}``).
        nodes: training nodes per task (one launcher each, one torchrun rendezvous).
        node_runner: ``local``: nodes 1..N-1 are processes on this host (rendezvous 127.0.0.1);
            ``deployment``: each is a run of ``node_deployment`` (a work pool places it).
        node_deployment: ``flow/deployment`` name of the node flow.
        master_addr: the rendezvous address (default: 127.0.0.1 locally, this host's address otherwise).
        max_parallel_tasks: how many tasks' train/evaluate/register chains run at once.
        tables: then run the paper-table stages (``ablation@<variant>`` ..., ``table1`` ... ``figure4``), one
            after another, once every task completed; false: the tasks only (the table stages stay stale).
        root: the repository (default: the working directory, which a deployment's pull step sets).

    Returns:
        Per task: its metrics and registry outcome (as in the artifact).
    """
    logger = get_run_logger()
    forward_termination()  # a cancelled run stops its DVC stages and trainings too
    repo = Path(root or os.getcwd()).resolve()
    try:
        plan = preflight(repo, tasks, overrides, nodes, tables)
    except PreflightError as exc:
        # A problem to fix, found before any task started: the run log gets the user's lines, not a
        # traceback, and the Failed state carries the error (state.result() raises it). Its traceback is
        # dropped: Prefect's engine re-raises a deployment run's failure once more at the end of the log.
        message = format_error(FLOW_NAME, exc)
        logger.error(message)
        return Failed(message=message, data=exc.with_traceback(None))
    if plan.changed:
        # Checked above; written atomically, comments kept (as `dvc exp run -S`): dvc.lock records them.
        write_overrides(repo / PARAMS_FILE, overrides or {})
        logger.info("params.yaml: %d override(s) written: %s", len(overrides or {}), ", ".join(overrides or {}))
    logger.info("tasks %s on %d node(s)", ", ".join(plan.tasks), nodes)

    root_s = str(repo)
    prep = prepare_task.submit(root_s)
    shards = shard_task.submit(root_s, wait_for=[prep])
    chains: list[tuple[str, list[PrefectFuture]]] = []
    for i, name in enumerate(plan.tasks):
        gate: list[Any] = [shards]
        if i >= max(1, max_parallel_tasks):  # a window of chains; a failed chain does not stop the next
            gate.append(allow_failure(chains[i - max(1, max_parallel_tasks)][1][-1]))
        trained = train_task.submit(
            root_s,
            name,
            nodes=nodes,
            node_runner=node_runner,
            node_deployment=node_deployment,
            master_addr=master_addr,
            params=plan.params,
            wait_for=gate,
        )
        evaluated = evaluate_task.submit(root_s, name, wait_for=[trained])
        registered = register_task.submit(root_s, name, wait_for=[evaluated])
        chains.append((name, [trained, evaluated, registered]))
    wait([prep, shards, *(f for _, fs in chains for f in fs)])
    task_futures = [prep, shards, *(f for _, fs in chains for f in fs)]
    tabled: list[str] = []
    if plan.table_stages and all(f.state.is_completed() for f in task_futures):
        tabled, table_failures = run_table_stages(root_s, plan.table_stages)
        task_futures += table_failures  # raised below, once the artifact is written

    results = []
    for name, futures in chains:
        failed = [f for f in futures if not f.state.is_completed()]
        results.append(results_of(repo, name, "ok" if not failed else f"{failed[0].state.name}"))
    create_markdown_artifact(
        results_markdown(repo, results, tabled),
        key=ARTIFACT_KEY,
        description="Per task: test PSNR/SSIM of the input and the restored images, the "
        "registered model version and the champion decision",
    )
    for future in task_futures:
        if future.state.is_failed() or future.state.is_crashed():
            future.result()  # raises the first failure: the flow run fails with it
    not_run = [r.task for r in results if r.status != "ok"]
    if not_run:
        raise RuntimeError(f"tasks not completed: {', '.join(not_run)}")
    return {r.task: r.to_dict() for r in results}


@flow(name=NODE_FLOW_NAME, log_prints=True)
def train_node(
    task_name: str,
    argv: list[str],
    params: dict[str, Any],
    nnodes: int,
    node_rank: int,
    master_addr: str,
    master_port: int,
    root: str | None = None,
) -> None:
    """One node (rank >= 1) of a multi-node training started by ``ast-pipeline`` with ``node_runner="deployment"``.

    Runs the train stage's command with this node's rank, against a copy of the parent run's params (this
    host's ``params.yaml`` may not have its overrides). Its checkpoints go to ``checkpoints/<experiment>/``
    in its working directory: on a cluster that folder must be shared storage for a retried training to
    resume on whichever hosts it lands.

    Raises:
        StageFailed: the node's launcher failed.
    """
    logger = get_run_logger()
    forward_termination()
    repo = Path(root or os.getcwd()).resolve()
    with tempfile.TemporaryDirectory(prefix="ast-node-") as tmp:
        params_file = Path(tmp) / PARAMS_FILE
        params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        cmd = [
            sys.executable,
            *argv[1:],
            "--params",
            str(params_file),
            *node_args(nnodes, node_rank, master_addr, master_port),
        ]
        proc = Proc(cmd, cwd=repo, env=stage_env(repo), logger=logger, prefix=f"[node {node_rank}] ")
        try:
            status = proc.wait()
        finally:
            proc.stop()
    if status:
        raise StageFailed(f"train@{task_name} node {node_rank}", status, proc.tail)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.flows``: run the ``ast-pipeline`` flow here (Prefect's local API, or the set server)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.flows", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append", dest="tasks", help="a task of params.yaml (repeat; default: all)")
    p.add_argument("--nodes", type=int, default=1, help="training nodes per task (local processes)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key (value parsed as YAML), e.g. 'tasks.rain.train.schedule.min_lr=1.0e-6'",
    )
    p.add_argument("--max-parallel-tasks", type=int, default=1)
    p.add_argument(
        "--no-tables", dest="tables", action="store_false", help="skip the paper-table stages after the tasks"
    )
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)

    try:  # the flow checks the same first; here a problem costs no Prefect server start
        preflight(Path.cwd().resolve(), args.tasks, overrides, args.nodes, args.tables)
    except PreflightError as exc:
        print(format_error("ast-pipeline", exc), file=sys.stderr)
        return EXIT_USER
    state = ast_pipeline(
        tasks=args.tasks,
        overrides=overrides,
        nodes=args.nodes,
        max_parallel_tasks=args.max_parallel_tasks,
        tables=args.tables,
        return_state=True,
    )
    if state.is_completed():
        return 0
    try:
        state.result()
    except PreflightError as exc:
        print(format_error("ast-pipeline", exc), file=sys.stderr)
        return EXIT_USER
    except StageFailed as exc:
        print(f"ast-pipeline: {exc.what} failed (exit status {exc.status}); its output is above", file=sys.stderr)
        return EXIT_USER if exc.user_fixable else 1
    except Exception:  # noqa: BLE001 - Prefect has logged it with its traceback
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
