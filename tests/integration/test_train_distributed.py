"""The train stage for real: torchrun + DeepSpeed (gloo) on a tiny model, MLflow in the embedded store.

One workspace (a git repo with shards and a dvc.lock) is shared by the module; every test launches the
stage as a user would (``python -m pipelines.stages.train``) and reads back files and MLflow runs. Each
launch costs ~10-20 s on 2 cores, so launches are shared between assertions where that stays honest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from ast_model.data.files import encode_png
from ast_model.data.shards import ShardSample, write_split
from tests.tiny_pipeline import TINY_AST

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # no launch in this module takes more than ~30 s; a hang fails instead of blocking CI

PROFILE = {
    "dataset": "tiny",
    "model_overrides": TINY_AST,
    "phases": [
        {"patch_size": 64, "batch_size": 4, "lr": 1e-3, "steps": 8},
        {"patch_size": 128, "batch_size": 2, "lr": 5e-4, "steps": 12},
    ],
    "schedule": {"warmup_steps": 2},
    "deterministic": True,
    "save_every": 4,
    "log_every": 2,
    "validation": {"every_steps": 6, "sample_images": 1},
    "launch": {"timeout_s": 120},
}


def _profile(experiment: str, **changes) -> dict:
    return {**PROFILE, "experiment": experiment, **changes}


def _split(folder: Path, n: int, n_shards: int, seed: int) -> None:
    """Smooth random images with noise added: a model can learn something in a few steps."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        base = rng.random((8, 8, 3))
        clean = np.kron(base, np.ones((16, 16, 1)))  # (128, 128, 3)
        noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
        to8 = lambda a: np.rint(a * 255).astype(np.uint8)  # noqa: E731
        records.append(
            ShardSample(f"p{i:03d}", encode_png(to8(noisy)), encode_png(to8(clean)), {"width": 128, "height": 128})
        )
    write_split(folder, records, lambda r: r, n_shards=n_shards, info={"dataset": "tiny"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, torch_extensions_dir: Path) -> Path:
    """A repository with shards, a dvc.lock naming them, params with one profile per test, git history."""
    ws = tmp_path_factory.mktemp("train")
    _split(ws / "data" / "shards" / "tiny" / "train", 8, 4, seed=0)
    _split(ws / "data" / "shards" / "tiny" / "val", 2, 1, seed=1)
    (ws / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  shard:\n    cmd: python -m pipelines.stages.shard\n    outs:\n"
        "    - path: data/shards\n      md5: 0123456789abcdef.dir\n      size: 1\n      nfiles: 1\n"
    )
    params = {
        "model": {"name": "ast_t", "bottleneck_shift": False},
        "train_one": _profile("one"),
        "train_ref": _profile("ref", zero_stage=2),
        "train_kill": _profile("kill", zero_stage=2),
        "train_nodes": _profile("nodes", zero_stage=1, precision="bf16"),
        # long enough to be killed midway
        "train_orphan": _profile("orphan", phases=[{"patch_size": 64, "batch_size": 2, "lr": 1e-3, "steps": 2000}]),
    }
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], cwd=ws, check=True)
    subprocess.run(git + ["add", "params.yaml", "dvc.lock"], cwd=ws, check=True)
    subprocess.run(git + ["commit", "-qm", "params"], cwd=ws, check=True)
    return ws


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _cmd(profile: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.stages.train", "--profile", profile, *extra]


def _stage(ws: Path, profile: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(profile, *extra), cwd=ws, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _runs(ws: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_torchrun_zero0_tracks_one_run_and_exports_plain_weights(workspace: Path) -> None:
    out = _ok(_stage(workspace, "train_one", "--launcher", "torchrun"))
    assert "1 process(es) via torchrun" in out and "step 20: val PSNR" in out
    model_dir = workspace / "models" / "one"
    assert {"final.pt", "best.pt", "config.json", "summary.json"} <= {p.name for p in model_dir.iterdir()}
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["world_size"] == 1

    # The final weights load through ast_model alone: DeepSpeed is never imported.
    code = (
        "import sys, ast_model, torch; m = ast_model.load_checkpoint(sys.argv[1]);"
        "y = m.eval()(torch.rand(1, 3, 40, 56)); assert y.shape == (1, 3, 40, 56);"
        "assert 'deepspeed' not in sys.modules; print(type(m).__name__, m.config.embed_dim)"
    )
    check = subprocess.run(
        [sys.executable, "-c", code, str(model_dir / "final.pt")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and check.stdout.split() == ["AST", "8"], check.stderr[-2000:]

    # Exactly one MLflow run, in the embedded store at the repo root, with everything the issue asks for.
    runs = _runs(workspace, "one")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((workspace / "mlartifacts").as_uri())
    p = run.data.params
    assert p["train.phases.1.patch_size"] == "128" and p["resolved.world_size"] == "1" and p["model.name"] == "ast_t"
    logged = set(run.data.metrics)
    assert {"train/loss", "train/lr", "train/images_per_s", "train/steps_per_s", "val/psnr", "val/ssim"} <= logged
    tags = run.data.tags
    assert tags["data.dvc.data/shards"] == "0123456789abcdef.dir" and len(tags["data.train_index_sha256"]) == 64
    assert len(tags["git.commit"]) == 40
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert client.list_artifacts(run.info.run_id, "images")  # sample restorations
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "config.json", "images"}


@pytest.fixture(scope="module")
def reference(workspace: Path) -> Path:
    """An uninterrupted 2-process ZeRO-2 deterministic run: its final weights."""
    out = _ok(_stage(workspace, "train_ref", "--nproc-per-node", "2"))
    assert "2 process(es) via torchrun" in out and "micro 2 x accum 1 x 2" in out
    return workspace / "models" / "ref" / "final.pt"


def test_two_processes_zero2(workspace: Path, reference: Path) -> None:
    summary = json.loads((reference.parent / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20 and summary["resumed_from_step"] is None
    # ZeRO-2 partitions the optimizer over the ranks: each rank wrote its own shard of it.
    tags = sorted((workspace / "checkpoints" / "ref").glob("step_*"))
    assert [t.name for t in tags] == ["step_00000016", "step_00000020"]  # keep_checkpoints = 2
    assert len(list(tags[-1].glob("*optim_states.pt"))) == 2 and len(list(tags[-1].glob("rng_rank*.pt"))) == 2
    assert len(_runs(workspace, "ref")) == 1


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the stage, torchrun and every worker at once (torchrun puts workers in their own sessions)."""
    parent = psutil.Process(proc.pid)
    for p in [parent, *parent.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


def test_sigkill_midway_then_relaunch_ends_with_the_uninterrupted_weights(workspace: Path, reference: Path) -> None:
    ckpt = workspace / "checkpoints" / "kill"
    final = workspace / "models" / "kill" / "final.pt"
    proc = subprocess.Popen(
        _cmd("train_kill", "--nproc-per-node", "2"),
        cwd=workspace,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (ckpt / "latest.json").exists():  # the first complete checkpoint (step 4)
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        _kill_tree(proc)
    killed_at = json.loads((ckpt / "latest.json").read_text())["step"]
    assert killed_at < 20 and not final.exists(), "the run finished before it could be killed"

    out = _ok(_stage(workspace, "train_kill", "--nproc-per-node", "2"))
    assert f"resuming from {ckpt / f'step_{killed_at:08d}'} at step {killed_at}" in out
    want, got = _weights(reference), _weights(final)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed weights differ from the uninterrupted run"

    runs = _runs(workspace, "kill")
    assert len(runs) == 1  # the relaunch continued the killed run
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["train.resumes"] == "1"


def test_workers_stop_when_their_launcher_is_killed(workspace: Path) -> None:
    """SIGKILL of torchrun's agent alone (the OOM killer's way): its workers, in sessions of their own, must
    not train on as orphans (they would race a relaunch for the checkpoint folder). They get SIGTERM from
    the kernel (PR_SET_PDEATHSIG) and stop as on a cancel."""
    ckpt = workspace / "checkpoints" / "orphan"
    proc = subprocess.Popen(
        _cmd("train_orphan", "--nproc-per-node", "2", "--launcher", "torchrun"),
        cwd=workspace,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    workers: list[psutil.Process] = []
    try:
        while not (ckpt / "latest.json").exists():  # the workers are training
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        family = psutil.Process(proc.pid).children(recursive=True)
        agent = [p for p in family if "torch.distributed.run" in p.cmdline()]
        workers = [p for p in family if "--worker" in p.cmdline() and p not in agent]
        assert len(agent) == 1 and len(workers) == 2, [p.cmdline() for p in family]
        agent[0].kill()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers still training 30 s after their launcher died: {alive}"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # the stage may have exited already
            _kill_tree(proc)
        proc.wait(timeout=30)
        for worker in workers:  # orphans are no longer in the stage's process tree
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
    assert json.loads((ckpt / "latest.json").read_text())["step"] < 2000  # stopped midway, checkpoint intact


def test_two_nodes_on_one_host(workspace: Path) -> None:
    port = str(_free_port())
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port]
    nodes = [
        subprocess.Popen(
            _cmd("train_nodes", *common, "--node-rank", str(r)),
            cwd=workspace,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        outs = [n.communicate(timeout=TIMEOUT)[0] for n in nodes]
    finally:
        for n in nodes:
            if n.poll() is None:
                _kill_tree(n)
    for node, out in zip(nodes, outs, strict=True):
        assert node.returncode == 0, out[-4000:]
    assert "2 process(es) via torchrun" in outs[0]
    summary = json.loads((workspace / "models" / "nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert _weights(workspace / "models" / "nodes" / "final.pt")["output_proj.proj.0.weight"].dtype == torch.float32
    assert len(_runs(workspace, "nodes")) == 1  # rank 0 on node 0 only
