"""The command that starts training workers: ``torchrun`` or ``deepspeed``, N nodes x M processes.

Node count, node rank, rendezvous address and processes per node come from params
(``train.launch``), then the environment (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, NPROC_PER_NODE,
as cluster schedulers set them), then the command line, each overriding the one before. On several nodes
the same stage command runs once per node with its own node rank; they rendezvous at
``master_addr:master_port`` (node 0). One process with launcher ``auto`` runs in-process, with no
launcher at all.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ast_model.config import ConfigError
from ast_model.train.distributed import free_port

ENV_KEYS = {
    "nnodes": "NNODES",
    "node_rank": "NODE_RANK",
    "master_addr": "MASTER_ADDR",
    "master_port": "MASTER_PORT",
    "nproc_per_node": "NPROC_PER_NODE",
}


@dataclass(frozen=True)
class LaunchConfig:
    """How the workers start: the ``launch`` key of a training profile (``train.launch``).

    ``nnodes``, ``node_rank``, ``master_addr``, ``master_port`` and ``nproc_per_node`` can also come from the
    environment (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, NPROC_PER_NODE) or the phase's command line,
    which win in that order over params.

    Attributes:
        launcher: ``torchrun`` or ``deepspeed``; ``none`` runs one worker in-process (world size 1);
            ``auto`` (default) is ``none`` for one process and ``torchrun`` otherwise.
        backend: ``auto`` = nccl when CUDA is available, else gloo.
        timeout_s: timeout of every collective: a stuck peer fails the run instead of hanging it.
        omp_threads: OMP_NUM_THREADS per worker (None: cores / processes on this node).
    """

    launcher: Literal["auto", "torchrun", "deepspeed", "none"] = "auto"
    nnodes: int = 1
    nproc_per_node: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: int = 600
    omp_threads: int | None = None

    def problems(self, section: str = "train.launch") -> list[str]:
        """Value checks that need no run-time facts (empty: fine)."""
        out = []
        if not 0 <= self.node_rank < self.nnodes:
            out.append(f"{section}.node_rank={self.node_rank} must be in [0, nnodes={self.nnodes})")
        if self.nproc_per_node < 1 or self.timeout_s < 1:
            out.append(f"{section}: nproc_per_node and timeout_s must be >= 1")
        return out


def launch_problems(cfg: LaunchConfig, *, has_gpu: bool, section: str = "train.launch") -> list[str]:
    """The effective launch (params + environment + command line) checked against this node."""
    problems = cfg.problems(section)
    if cfg.backend == "nccl" and not has_gpu:
        problems.append(f"{section}.backend=nccl needs a GPU: use gloo or auto")
    if cfg.launcher == "none" and world_size(cfg) != 1:
        problems.append(f"{section}.launcher=none runs one process, but world size is {world_size(cfg)}")
    return problems


def resolve_launch(
    cfg: LaunchConfig, *, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> LaunchConfig:
    """Apply environment variables, then explicit overrides (None values ignored), to ``cfg``.

    Args:
        cfg: ``train.launch`` from params.
        env: the environment (default ``os.environ``).
        overrides: command-line values by field name.

    Returns:
        The effective launch config.

    Raises:
        ConfigError: an environment variable that is not a valid integer.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, var in ENV_KEYS.items():
        if env.get(var):
            raw = env[var]
            if name == "master_addr":
                values[name] = raw
            else:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigError(f"environment {var}={raw!r} is not an integer") from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return dataclasses.replace(cfg, **values)


def world_size(cfg: LaunchConfig) -> int:
    """Total training processes."""
    return cfg.nnodes * cfg.nproc_per_node


def launcher_of(cfg: LaunchConfig) -> str:
    """The launcher that will run: ``auto`` is ``none`` for a single process, else ``torchrun``."""
    if cfg.launcher == "auto":
        return "none" if world_size(cfg) == 1 else "torchrun"
    return cfg.launcher


def omp_threads(cfg: LaunchConfig, cpu_count: int | None = None) -> int:
    """Threads per worker: configured, else this node's cores shared by its processes (at least 1)."""
    if cfg.omp_threads:
        return cfg.omp_threads
    return max(1, (cpu_count or os.cpu_count() or 1) // cfg.nproc_per_node)


def build_command(cfg: LaunchConfig, worker_args: Sequence[str], *, python: str | None = None) -> list[str]:
    """The launcher command line that runs ``python -m <worker_args...>`` on every local rank.

    Args:
        cfg: the effective launch config (launcher ``torchrun`` or ``deepspeed``).
        worker_args: module and arguments, e.g. ``["pipelines.stages.train", "--worker", spec]``.
        python: the interpreter (default: this one, so the workers share its virtualenv).

    Returns:
        The argv to execute on this node.
    """
    python = python or sys.executable
    launcher = launcher_of(cfg)
    module, *args = worker_args
    single = cfg.nnodes == 1
    if launcher == "torchrun":
        cmd = [
            python,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(cfg.nproc_per_node),
            "--max_restarts",
            "0",
        ]
        if single:
            cmd += ["--standalone"]  # a free port of its own: concurrent runs on one host never clash
        else:
            cmd += [
                "--nnodes",
                str(cfg.nnodes),
                "--node_rank",
                str(cfg.node_rank),
                "--master_addr",
                cfg.master_addr,
                "--master_port",
                str(cfg.master_port),
            ]
        return cmd + ["-m", module, *args]
    if launcher == "deepspeed":
        port = free_port() if single else cfg.master_port
        cmd = [
            python,
            "-m",
            "deepspeed.launcher.runner",
            "--num_nodes",
            str(cfg.nnodes),
            "--num_gpus",
            str(cfg.nproc_per_node),
            "--master_addr",
            cfg.master_addr,
            "--master_port",
            str(port),
            "--no_local_rank",
        ]
        if not single:
            # Each node is started by its own stage invocation: no hostfile, no ssh.
            cmd += ["--no_ssh", "--node_rank", str(cfg.node_rank)]
        return cmd + ["--module", module, *args]
    raise ValueError(f"launcher {launcher!r} does not start processes (run the worker in-process)")


def worker_env(cfg: LaunchConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: ``base`` plus OMP_NUM_THREADS (the deepspeed launcher sets none)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(omp_threads(cfg)))
    # Launcher variables of an outer job would confuse the rendezvous of ours.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        env.pop(var, None)
    return env


def run(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the launcher, forwarding SIGTERM / SIGINT to it; return its exit status.

    The launcher itself tears down all local workers when one fails (torchrun with ``--max_restarts 0``
    and DeepSpeed's runner both do), so a dying rank ends the launch with a non-zero status.
    """
    proc = subprocess.Popen(list(cmd), env=dict(env))
    previous = {}

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
