"""MLflow for the pipeline: where the store is, run tags (data version, git), and the training tracker.

Store: ``MLFLOW_TRACKING_URI`` when set (a server on a cluster), else the embedded store of docs/design.md#mlflow:
SQLite ``mlflow.db`` and artifacts in ``mlartifacts/`` at the repository root, as absolute paths, so a
``dvc exp run --temp`` copy (under ``<repo>/.dvc/tmp/exps/``) and Prefect workers log to the same store.

Only rank 0 talks to MLflow; the other ranks receive the run id from it (:mod:`ast_model.train.run`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ast_model.artifacts import index_sha256

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


def repo_root(start: str | Path | None = None) -> Path:
    """The repository root: the original repo for DVC's temporary experiment copies.

    Args:
        start: where to start looking (default: the working directory, where DVC runs stages).

    Returns:
        ``<repo>`` for a path under ``<repo>/.dvc/tmp/exps/...``; else the nearest folder holding
        ``.git`` or ``dvc.yaml``; else ``start``.
    """
    here = Path(start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - 3):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / ".git").exists() or (folder / "dvc.yaml").exists():
            return folder
    return here


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo>/mlflow.db`` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root(root) / 'mlflow.db'}"


LOCAL_STORE_HINT = "--local-store"
PROBE_TIMEOUT_S = 4.0  # per request; at most two requests: the check stays under 10 s


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or written; the message says which URI and how to go on."""


def use_local_store(root: str | Path | None = None) -> str:
    """Point this process and the ones it starts at the embedded store (``--local-store``); returns its URI."""
    uri = f"sqlite:///{repo_root(root) / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def stage_prologue(prog: str, *, local_store: bool, probe: bool, offline_hint: str = "") -> int | None:
    """The first lines of a stage's ``main()``, before torch is imported.

    ``--local-store`` points this process and its children at the repo's store; then, when the stage will
    track (``probe``), the store is probed with a short timeout, so a dead server costs seconds and one line
    (``<prog>: <problem>``, exit status 2) instead of minutes of MLflow's retries.

    Returns:
        None to go on, or the exit status 2 after the problem was printed.
    """
    if local_store:
        use_local_store()
    if probe:
        problem = tracking_problem(offline_hint=offline_hint)
        if problem:
            print(f"{prog}: {problem}", file=sys.stderr, flush=True)
            return 2
    return None


def tracking_problem(
    uri: str | None = None,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    offline_hint: str = "",
    local_store_hint: str = LOCAL_STORE_HINT,
    root: str | Path | None = None,
) -> str | None:
    """Can the tracking store be used? One line saying why not, or None. Nothing waits longer than ``timeout_s``.

    MLflow's own client retries a dead server for minutes (exponential back-off) before failing with a long
    chained traceback; this asks once, with a short timeout, before any process or run starts.

    - ``http(s)://``: ``GET <uri>/health`` (MLflow's health endpoint). Any HTTP answer below 500 counts as
      reachable, except 401/403 (credentials); a refused connection, a timeout, an unknown host or a 5xx
      answer is a problem.
    - ``sqlite:///path`` and ``file:`` / plain paths: the folder must be writable (probed, not created).
    - Other schemes (``databricks``, ...): not checked here.

    Args:
        uri: the store (default: :func:`tracking_uri`).
        timeout_s: connect + read timeout of the HTTP probe.
        offline_hint: the command's own option to run without tracking (e.g. ``--no-mlflow``), named in
            the message next to the local store.
        local_store_hint: the command's own way to use the local store (``--local-store``); empty: the
            command has none, and the message only says to unset ``MLFLOW_TRACKING_URI``.
        root: the repository whose local store the message offers (default: found from the working folder).

    Returns:
        None when usable, else one line naming the URI, the reason and how to run without it.
    """
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    uri = uri or tracking_uri(root)
    parsed = urllib.parse.urlparse(uri)
    local = f"sqlite:///{repo_root(root) / 'mlflow.db'}"
    local_way = f" or pass {local_store_hint}" if local_store_hint else ""
    ways = [f"unset MLFLOW_TRACKING_URI{local_way} to use the local store {local}"]
    if offline_hint:
        ways.append(f"pass {offline_hint} to run without tracking")
    how = "; ".join(ways)
    if parsed.scheme in ("http", "https"):
        start = time.monotonic()
        try:
            # /health first (cheap); if something answers but has no such route (a proxy in front), the
            # REST API itself must answer, or this is not an MLflow server.
            for route in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
                url = uri.rstrip("/") + route
                try:
                    with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout_s):
                        return None
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:
                        raise
            return (
                f"{uri} answers, but not as an MLflow tracking server (HTTP 404 on /health and the REST API): "
                f"check the URI, or {how}"
            )
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                return (
                    f"tracking server {uri} refused access (HTTP {exc.code}): set MLFLOW_TRACKING_USERNAME / "
                    f"MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, or {how}"
                )
            if exc.code < 500:
                return None  # it answers (e.g. 400/405 for a GET the server does not expect)
            reason = f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError) as exc:
            inner = getattr(exc, "reason", exc)
            if isinstance(inner, (socket.timeout, TimeoutError)):
                reason = f"no answer within {timeout_s:g} s"
            elif isinstance(inner, ConnectionRefusedError):
                reason = "connection refused: nothing listens there"
            elif isinstance(inner, socket.gaierror):
                reason = f"unknown host {parsed.hostname!r}"
            else:
                reason = str(getattr(inner, "strerror", None) or inner)
        waited = time.monotonic() - start
        return f"tracking server {uri} is unreachable ({reason}, after {waited:.1f} s): start it, or {how}"
    from ast_model.preflight import output_dir_problem  # here, not above: it imports torch (seconds)

    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is None or not str(path):
            return None  # in-memory or an unusual form: let MLflow judge
        if path.exists() and not path.is_file():
            return f"tracking store {uri}: {path} is not a file"
        problem = output_dir_problem(path.parent, "tracking store folder")
        return f"{problem} (MLFLOW_TRACKING_URI={uri}); {how}" if problem else None
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        problem = output_dir_problem(folder, "tracking store folder")
        return f"{problem} (MLFLOW_TRACKING_URI={uri}); {how}" if problem else None
    return None


def is_tracking_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) comes from MLflow or its HTTP stack."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.split(".")[0] in ("mlflow", "requests", "urllib3"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_tracking(*, offline_hint: str = "", timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` (one line) unless :func:`tracking_problem` finds the store usable."""
    problem = tracking_problem(timeout_s=timeout_s, offline_hint=offline_hint)
    if problem:
        raise TrackingError(problem)


def client(root: str | Path | None = None) -> Any:
    """An ``MlflowClient`` on :func:`tracking_uri`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(root))


def create_local_store(root: str | Path | None = None) -> None:
    """Create the SQLite store's tables now if :func:`tracking_uri` is a SQLite store that has none yet.

    Processes started side by side on a new store would otherwise all run MLflow's schema creation at once
    and race on it. A server store, or a store that exists, is left alone (nothing is contacted).
    """
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///") :]).exists():
        return
    client(root).search_experiments(max_results=1)  # the store's first use creates its tables


def experiment_id(mlflow_client: Any, name: str, root: str | Path | None = None) -> str:
    """Id of experiment ``name``, created if absent.

    With a SQLite store the artifacts go to ``mlartifacts/<name>`` beside the database (for the embedded
    store: ``<repo>/mlartifacts``), never to MLflow's default ``./mlruns`` under whatever the working
    directory is. A server decides for itself.
    """
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri(root)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts" / name).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it meanwhile
        exp = mlflow_client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts / lists -> ``{"a.b.0.c": "value"}`` strings (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, (list, tuple)) and value and any(isinstance(v, (Mapping, list, tuple)) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = str(value)
    return out


def git_tags(root: str | Path | None = None) -> dict[str, str]:
    """``git.commit`` (and MLflow's own source tag) and ``git.dirty``; empty outside a git repo."""
    cwd = str(repo_root(root))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if commit.returncode != 0:
        return {}
    sha = commit.stdout.strip()
    return {"git.commit": sha, "mlflow.source.git.commit": sha, "git.dirty": str(bool(status.stdout.strip())).lower()}


def data_version_tags(shard_dir: str | Path, root: str | Path | None = None) -> dict[str, str]:
    """The data version: the shard outputs' hashes recorded in ``dvc.lock``, and the index's own hash.

    Args:
        shard_dir: the training split folder (``data/shards/<dataset>/train``).
        root: the repository (default: :func:`repo_root`).

    Returns:
        ``data.train_index_sha256`` (always, when the index exists) and ``data.dvc.<out path>`` = md5 of
        every ``dvc.lock`` output that contains or lies inside ``shard_dir``.
    """
    root = repo_root(root)
    shard_dir = Path(shard_dir).resolve()
    tags: dict[str, str] = {}
    try:
        tags["data.train_index_sha256"] = index_sha256(shard_dir)
    except FileNotFoundError:  # not sharded yet: the pre-flight reports that; no tag here
        pass
    lock = root / "dvc.lock"
    if not lock.is_file():
        return tags
    try:
        # libyaml's parser when PyYAML has it: dvc.lock lists every stage's deps (~160 KB; 0.55 s -> 0.08 s).
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        stages = (yaml.load(lock.read_text(encoding="utf-8"), Loader=loader) or {}).get("stages", {})  # noqa: S506
    except yaml.YAMLError as exc:
        log.warning("dvc.lock unreadable (%s): no DVC data version tag", exc)
        return tags
    for stage in stages.values():
        for out in stage.get("outs", []) if isinstance(stage, dict) else []:
            path = (root / out.get("path", "")).resolve()
            if path == shard_dir or path in shard_dir.parents or shard_dir in path.parents:
                digest = out.get("md5") or out.get("hash") or ""
                tags[f"data.dvc.{out['path']}"] = str(digest)
    return tags


class MlflowTracker:
    """The training run in MLflow (:class:`ast_model.train.tracker.Tracker`), used on rank 0 only.

    Metrics and images are logged asynchronously (MLflow's queue), so a slow store never stalls a step;
    :meth:`finish` flushes the queue.
    """

    def __init__(self, mlflow_client: Any, run_id: str) -> None:
        self.client, self.run_id = mlflow_client, run_id

    @classmethod
    def start(
        cls,
        *,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        resume_run_id: str | None = None,
        stale_run_id: str | None = None,
    ) -> MlflowTracker:
        """Continue ``resume_run_id`` if the store has it, else create a run.

        Args:
            experiment: MLflow experiment name.
            run_name: the run's display name.
            params: nested params, logged flattened (keys already logged on a resumed run are kept).
            tags: data version, git commit, profile, ...
            resume_run_id: the run of the checkpoints being resumed.
            stale_run_id: a run abandoned for a fresh start; marked KILLED if still RUNNING.
        """
        c = client()
        if stale_run_id:
            _terminate_if_running(c, stale_run_id)
        run = _existing_run(c, resume_run_id)
        if run is None:
            exp_id = experiment_id(c, experiment)
            run = c.create_run(exp_id, run_name=run_name, tags=dict(tags))
            logged: dict[str, str] = {}
        else:
            c.update_run(run.info.run_id, status="RUNNING")
            logged = dict(run.data.params)
            resumes = int(run.data.tags.get("train.resumes", "0")) + 1
            c.set_tag(run.info.run_id, "train.resumes", str(resumes))
        tracker = cls(c, run.info.run_id)
        tracker._log_params(flatten(params), logged)
        log.info("MLflow run %s (%s)", tracker.run_id, tracking_uri())
        return tracker

    def log_dataset(
        self, name: str, split_dir: str | Path, *, context: str, tags: Mapping[str, str] | None = None
    ) -> None:
        """Record a shard split as an MLflow dataset input of the run (the run's "Datasets used").

        The digest is the split's index sha256 (which lists every shard's sha256): equal digests mean the
        same samples. Its profile holds the sample and shard counts, the full index hash and ``tags`` (e.g.
        the ``dvc.lock`` md5 of the shard output), so a registered version leads back to its exact data.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from ast_model.data.shards import read_index

        split_dir = Path(split_dir)
        index = read_index(split_dir)
        digest = index_sha256(split_dir)
        profile = {
            "samples": index.get("samples"),
            "shards": len(index.get("shards", [])),
            "index_sha256": digest,
            "task": index.get("task"),
            **dict(tags or {}),
        }
        dataset = Dataset(
            name=f"{name}/{split_dir.name}",
            digest=digest[:32],
            source_type="local",
            source=split_dir.resolve().as_uri(),
            profile=json.dumps(profile, sort_keys=True),
        )
        self.client.log_inputs(
            self.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
        )

    def _log_params(self, flat: dict[str, str], logged: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
        if changed:  # only launch / logging keys can differ on a resume (the fingerprint covers the rest)
            log.warning("MLflow params keep their first values for: %s", ", ".join(changed))
        new = [Param(k, v[:6000]) for k, v in sorted(flat.items()) if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log finite scalars at ``step`` (asynchronously)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch, synchronous=False)

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        """Log a uint8 HxWx3 image under ``key`` at ``step`` (shown in the run's image grid)."""
        from ast_model.data.files import safe_name

        self.client.log_image(self.run_id, image, key=safe_name(key), step=step, synchronous=False)

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file."""
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def finish(self, status: str, message: str | None = None) -> None:
        """Flush queued logs and end the run with ``status`` (FINISHED / FAILED / KILLED)."""
        import mlflow

        try:
            mlflow.flush_async_logging()
            if message:
                self.client.set_tag(self.run_id, "train.error", message[:5000])
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # never mask the training error with a tracking error
            log.warning("could not finish MLflow run %s: %s", self.run_id, exc)


def run_for_stage(
    mlflow_client: Any, run_id: str | None, *, experiment: str, run_name: str, tags: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """The run a later stage (evaluate, register) logs into: the training's run when the store has it.

    Args:
        mlflow_client: an ``MlflowClient`` on :func:`tracking_uri`.
        run_id: the training's run id (``models/<experiment>/summary.json``), or None.
        experiment: MLflow experiment of a run created as a fallback.
        run_name: its name.
        tags: its tags.

    Returns:
        ``(run id, created)``: ``created`` is True when the training run was unknown (no id, or not in this
        store, e.g. ``MLFLOW_TRACKING_URI`` changed since training) and a new, finished run was made instead.
    """
    if _existing_run(mlflow_client, run_id) is not None:
        return str(run_id), False
    run = mlflow_client.create_run(experiment_id(mlflow_client, experiment), run_name=run_name, tags=dict(tags or {}))
    mlflow_client.set_terminated(run.info.run_id, "FINISHED")
    log.warning("no training run %s in %s: logging into a new run %s", run_id, tracking_uri(), run.info.run_id)
    return run.info.run_id, True


def _existing_run(mlflow_client: Any, run_id: str | None) -> Any:
    if not run_id:
        return None
    try:
        return mlflow_client.get_run(run_id)
    except Exception:  # not in this store (e.g. MLFLOW_TRACKING_URI changed): start a new run
        log.warning("MLflow run %s not found in %s: starting a new run", run_id, tracking_uri())
        return None


def _terminate_if_running(mlflow_client: Any, run_id: str) -> None:
    try:
        if mlflow_client.get_run(run_id).info.status == "RUNNING":
            mlflow_client.set_terminated(run_id, "KILLED")
            mlflow_client.set_tag(run_id, "train.error", "abandoned: a fresh run replaced it")
    except Exception:
        pass
