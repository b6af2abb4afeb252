"""Process-group setup and the few collectives the loop needs, each under a timeout.

A worker started by torchrun / the deepspeed launcher finds RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT in its environment. A single process started without a launcher gets defaults here, so
``deepspeed.initialize`` does not go looking for MPI (it would otherwise).
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this rank computes on.
        backend: the torch.distributed backend in use.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs, tracks and writes shared files."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (for single-process rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_launcher_env(environ: dict[str, str] | None = None) -> bool:
    """Fill in the launcher variables for a process started without a launcher.

    Args:
        environ: the environment to complete (``os.environ`` by default).

    Returns:
        True when defaults were set (single process), False when a launcher provided them.

    Raises:
        RuntimeError: only some of the variables are set (a broken launcher environment).
    """
    env = os.environ if environ is None else environ
    present = [v for v in LAUNCHER_VARS if v in env]
    if len(present) == len(LAUNCHER_VARS):
        return False
    if present and set(present) != {"MASTER_ADDR", "MASTER_PORT"}:
        missing = sorted(set(LAUNCHER_VARS) - set(present))
        raise RuntimeError(f"incomplete launcher environment: {present} set but {missing} missing")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    return True


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``nccl`` with CUDA, else ``gloo``."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def init_distributed(backend: str = "auto", timeout_s: int = 600) -> DistInfo:
    """Start (or join) the process group through DeepSpeed's communication layer.

    Args:
        backend: ``auto``, ``gloo`` or ``nccl``.
        timeout_s: timeout of every collective; a dead or stuck peer raises instead of hanging.

    Returns:
        This process's :class:`DistInfo`.
    """
    import deepspeed  # heavy import, kept out of module import time

    missing = [v for v in LAUNCHER_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"no launcher environment ({', '.join(missing)} unset): start under torchrun / deepspeed, "
            "or call ensure_launcher_env() first for a single process"
        )
    backend = resolve_backend(backend)
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), auto_mpi_discovery=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def seed_everything(seed: int, *, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (all devices); in deterministic mode also pin the algorithms.

    Args:
        seed: the seed.
        deterministic: ``torch.use_deterministic_algorithms(True)``, cudnn benchmark off, and the cuBLAS
            workspace setting it requires; costs some speed on GPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS also needs CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before CUDA starts: the
        # worker entry point sets it (deterministic_env); the library leaves the environment alone.
        torch.use_deterministic_algorithms(True)
        # That switch also makes torch.empty fill new memory with NaN (a debugging aid, not needed for
        # determinism); DeepSpeed's ZeRO allocates its 5e8-element gradient buckets with torch.empty on
        # every step, so the fill would cost seconds per step on CPU.
        # ignore: a property of a ModuleType subclass that torch swaps in at import; its stubs do not declare it
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from (Python, NumPy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, one collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
