"""The launcher command for N nodes x M processes, and where its settings come from."""

from __future__ import annotations

import pytest

from ast_model.config import ConfigError
from ast_model.train.distributed import ensure_launcher_env
from pipelines.launch import LaunchConfig, build_command, launcher_of, omp_threads, resolve_launch, worker_env

WORKER = ["pipelines.stages.train", "--worker", "spec.json"]


def test_torchrun_single_node_is_standalone() -> None:
    cmd = build_command(LaunchConfig(launcher="torchrun", nproc_per_node=2), WORKER, python="py")
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--master_port" not in cmd
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and cmd[cmd.index("--max_restarts") + 1] == "0"
    assert cmd[-4:] == ["-m", *WORKER]


def test_torchrun_two_nodes_rendezvous_at_the_master() -> None:
    cfg = LaunchConfig(nnodes=2, node_rank=1, nproc_per_node=1, master_addr="10.0.0.1", master_port=29511)
    cmd = build_command(cfg, WORKER, python="py")
    flags = dict(zip(cmd[3:-4:2], cmd[4:-4:2], strict=True))
    assert flags["--nnodes"] == "2" and flags["--node_rank"] == "1"
    assert flags["--master_addr"] == "10.0.0.1" and flags["--master_port"] == "29511"
    assert "--standalone" not in cmd


def test_deepspeed_launcher_needs_no_ssh_or_hostfile() -> None:
    one = build_command(LaunchConfig(launcher="deepspeed", nproc_per_node=2), WORKER, python="py")
    assert one[:3] == ["py", "-m", "deepspeed.launcher.runner"] and "--no_ssh" not in one
    assert one[one.index("--num_gpus") + 1] == "2" and "--no_local_rank" in one
    assert one[-4:] == ["--module", *WORKER]
    two = build_command(LaunchConfig(launcher="deepspeed", nnodes=2, node_rank=1), WORKER, python="py")
    assert "--no_ssh" in two and two[two.index("--node_rank") + 1] == "1"


def test_auto_launcher_runs_one_process_in_process() -> None:
    assert launcher_of(LaunchConfig()) == "none"
    assert launcher_of(LaunchConfig(nproc_per_node=2)) == "torchrun"
    assert launcher_of(LaunchConfig(nnodes=2)) == "torchrun"
    with pytest.raises(ValueError, match="in-process"):
        build_command(LaunchConfig(), WORKER)


def test_params_then_environment_then_command_line() -> None:
    cfg = LaunchConfig(nnodes=1, master_addr="127.0.0.1", master_port=29500)
    env = {"NNODES": "4", "NODE_RANK": "2", "MASTER_ADDR": "head", "MASTER_PORT": "1234"}
    got = resolve_launch(cfg, env=env, overrides={"node_rank": 3, "master_port": None})
    assert (got.nnodes, got.node_rank, got.master_addr, got.master_port) == (4, 3, "head", 1234)
    with pytest.raises(ConfigError, match="NNODES"):
        resolve_launch(cfg, env={"NNODES": "two"})


def test_worker_env_sets_threads_and_drops_outer_launcher_vars() -> None:
    cfg = LaunchConfig(nproc_per_node=2)
    assert omp_threads(cfg, cpu_count=8) == 4 and omp_threads(LaunchConfig(omp_threads=3), 8) == 3
    env = worker_env(cfg, {"RANK": "5", "PATH": "/bin"})
    assert "RANK" not in env and env["PATH"] == "/bin" and int(env["OMP_NUM_THREADS"]) >= 1


def test_single_process_without_launcher_gets_defaults() -> None:
    env: dict[str, str] = {}
    assert ensure_launcher_env(env) is True
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["LOCAL_RANK"] == "0" and int(env["MASTER_PORT"]) > 0
    assert ensure_launcher_env(env) is False  # complete now: left alone
    with pytest.raises(RuntimeError, match="incomplete launcher environment"):
        ensure_launcher_env({"RANK": "1"})
