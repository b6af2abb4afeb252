"""Model sources held by MLflow (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/PATH``), and the
installed commands that accept them: ``ast-restore``, ``ast-export`` (``ast-demo``: :mod:`pipelines.demo`).

The library (``ast_model``) takes local sources only and imports no tracking package; its command-line
entry points accept a resolver. This module is that resolver: it downloads the registered model's
artifacts (the project checkpoint, and the exported ``.onnx`` where the register stage attached one) into
a local cache folder and hands the folder to the library, which loads the checkpoint (or, with
``--backend onnxruntime``, the ``.onnx``) from it. A model logged with the ``mlflow.pytorch`` flavour
instead of the project's pyfunc is loaded through that flavour.

The tracking store is the usual one: ``MLFLOW_TRACKING_URI``, else the project's local store.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

__all__ = ["MLFLOW_SCHEMES", "demo_main", "export_main", "is_mlflow_uri", "load_model", "resolve", "restore_main"]

MLFLOW_SCHEMES = ("models:/", "runs:/")


def is_mlflow_uri(spec: str) -> bool:
    """Whether ``spec`` is an MLflow model or run URI."""
    return spec.startswith(MLFLOW_SCHEMES)


def resolve(spec: str) -> Path | nn.Module:
    """Fetch an MLflow URI: the local folder of its artifacts, or a model for the ``mlflow.pytorch`` flavour.

    Args:
        spec: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``.

    Returns:
        The downloaded folder (holding the project checkpoint, and ``onnx/*.onnx`` when attached), or
        the loaded model when the artifacts are an ``mlflow.pytorch`` model without a project checkpoint.

    Raises:
        ValueError: not an MLflow URI, or MLflow could not fetch it (unknown model or alias, no server);
            the message names the URI.
    """
    if not is_mlflow_uri(spec):
        raise ValueError(f"{spec!r} is not an MLflow URI ({', '.join(MLFLOW_SCHEMES)})")
    from pipelines.tracking import tracking_problem, tracking_uri

    # A dead server: one line in seconds, not minutes of MLflow's retries. (Only a server is probed: a
    # SQLite store need not be writable to read a model from it.)
    if tracking_uri().startswith(("http://", "https://")):
        problem = tracking_problem(local_store_hint="")
        if problem:
            raise ValueError(f"cannot fetch {spec}: {problem}")
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    except Exception as exc:  # MlflowException (unknown model/alias, no server) is not an OSError
        raise ValueError(f"cannot fetch {spec} from MLflow: {exc}") from exc
    has_checkpoint = any(p.suffix in (".pt", ".pth", ".ckpt") for p in local.rglob("*") if p.is_file())
    mlmodel = local / "MLmodel"
    if not has_checkpoint and mlmodel.is_file() and "pytorch:" in mlmodel.read_text(encoding="utf-8"):
        return mlflow.pytorch.load_model(str(local), map_location="cpu")
    return local


def load_model(spec: str, weights: str | None = None, *, backend: str = "pytorch") -> nn.Module:
    """:func:`ast_model.cli.load_model` that also accepts MLflow URIs."""
    from ast_model.cli import load_model as load_local

    return load_local(spec, weights, backend=backend, resolve=resolve)


def restore_main(argv: Sequence[str] | None = None) -> int:
    """The installed ``ast-restore`` command (see :mod:`ast_model.cli`), MLflow URIs included."""
    from ast_model import cli

    return cli.main(argv, resolve=resolve)


def export_main(argv: Sequence[str] | None = None) -> int:
    """The installed ``ast-export`` command (see :mod:`ast_model.export`), MLflow URIs included."""
    from ast_model import export

    return export.main(argv, load=lambda spec, weights: load_model(spec, weights))


def demo_main(argv: Sequence[str] | None = None) -> int:
    """The installed ``ast-demo`` command (see :mod:`pipelines.demo`)."""
    from pipelines import demo

    return demo.main(argv, load=load_model)


if __name__ == "__main__":  # python -m pipelines.model_source ...: the same as ast-restore
    sys.exit(restore_main())
