"""Issue 13, finding 2: a dead tracking server stops a stage in one line, in seconds, before anything starts.

Real processes (the stages as a user runs them) against a real closed port on 127.0.0.1: a socket is bound
to a free port and closed again, so nothing listens there and a connection is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ast_model import create_model, save_checkpoint
from tests.shards import write_tiny_split as _split
from tests.tiny_pipeline import TINY_AST as TINY

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 15.0  # the bound for the whole command, interpreter start-up included

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there afterwards


@pytest.fixture
def project(tmp_path: Path) -> Path:
    params = {
        "model": {"name": "ast_t"},
        "train": {
            "experiment": "dead",
            "dataset": "tiny",
            "model_overrides": TINY,
            "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1e-3, "steps": 2}],
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _split(tmp_path / "data/shards/tiny/train", 4, 2)
    _split(tmp_path / "data/shards/tiny/val", 1, 1)
    _split(tmp_path / "data/shards/tiny/test", 2, 1, info={"dataset": "tiny", "task": "rain", "split": "test"})
    (tmp_path / "models/dead").mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(create_model("ast_t", **TINY), tmp_path / "models/dead/final.pt")
    return tmp_path


def _run(project: Path, uri: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "AST_CACHE_DIR": str(project / "cache"), "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    return proc, time.monotonic() - start


STAGE_ARGS = {
    "train": ["--checkpoints", "ckpt"],
    "evaluate": ["--quiet"],
    "register": [],
    "ablation": ["--variant", "assa", "--work", "ckpt"],
    "tables": ["--table", "table4"],
}


@pytest.mark.parametrize("stage", list(STAGE_ARGS))
def test_a_dead_tracking_uri_fails_fast_in_one_line(project: Path, stage: str) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    proc, seconds = _run(project, uri, f"pipelines.stages.{stage}", *STAGE_ARGS[stage])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    assert lines[0].startswith(f"{stage}: tracking server {uri} is unreachable (connection refused")
    assert "--local-store" in lines[0]  # how to run without the server
    if stage != "register":  # registering needs a store: no option to run without one
        assert "--no-mlflow" in lines[0]
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert not (project / "ckpt").exists() and not (project / "metrics").exists()  # nothing started
    assert not (project / "reports").exists()


def test_the_offline_options_get_past_the_dead_server(project: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    proc, _ = _run(project, uri, "pipelines.stages.train", "--checkpoints", "ckpt", "--check", "--no-mlflow")
    assert proc.returncode == 0, proc.stderr
    proc, _ = _run(project, uri, "pipelines.stages.train", "--checkpoints", "ckpt", "--check", "--local-store")
    assert proc.returncode == 0, proc.stderr


def test_the_flow_cli_stops_on_a_dead_tracking_uri_before_any_task(tmp_path: Path) -> None:
    """``python -m pipelines.flows``: one line, exit 2, before Prefect or any stage starts (prepare would
    otherwise run for minutes before the first stage that tracks)."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    uri = f"http://127.0.0.1:{closed_port()}"
    proc, seconds = _run(tmp_path, uri, "pipelines.flows", "--no-tables")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"ast-pipeline: tracking server {uri} is unreachable (connection refused")
    assert "unset MLFLOW_TRACKING_URI" in lines[0] and "--local-store" not in lines[0]  # the flow has no such option
    assert seconds < BOUND_S, f"{seconds:.1f} s"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing prepared


def test_the_flow_run_fails_with_the_problem_not_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment run goes straight into the flow: its state carries the error, its log the one line."""
    from pipelines.errors import PreflightError
    from pipelines.flows import ast_pipeline

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(REPO / "params.yaml", repo / "params.yaml")
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # Prefect's temporary local API
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    state = ast_pipeline(tables=False, root=str(repo), return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"ast-pipeline: tracking server {uri} is unreachable")
    assert f"sqlite:///{repo.resolve()}/mlflow.db" in state.message  # the run's own repository's store
    with pytest.raises(PreflightError, match="is unreachable"):
        state.result()
    flow_log = _run_log(state.state_details.flow_run_id)  # what the Prefect UI shows for the run
    assert any("is unreachable" in line for line in flow_log), flow_log
    assert not any("Traceback" in line or "Encountered exception" in line for line in flow_log), flow_log
    assert [p.name for p in repo.iterdir()] == ["params.yaml"]  # nothing prepared


def _run_log(flow_run_id: object) -> list[str]:
    """The log lines Prefect's API holds for a flow run (its handler sends them in batches: flushed first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]
