"""The MLflow model registry: the restorer pyfunc, model versions, and the champion alias.

A trained checkpoint becomes a registered model version in four steps:

1. :func:`save_restorer` builds an MLflow pyfunc folder (the code in :mod:`pipelines.restorer_model`, the
   ``ast_model`` package, the project checkpoint as the artifact ``checkpoint``, requirements pinned to
   ``requirements.txt``) and checks that it loads and restores an image;
2. :func:`log_restorer` stores it as a logged model of the training's MLflow run;
3. :func:`register_version` creates a version of the registered model ``<task>-ast``, tagged with its test
   score (``test.*`` tags: the PSNR and what it was measured on);
4. :func:`current_champion`, :func:`pipelines.gate.decide` and :func:`apply_decision`: the alias
   ``champion`` moves to the new version only if its test PSNR beats the champion's on the same dataset,
   split and metric protocol; otherwise the version is tagged ``challenger`` with the reason.

Everything goes through an explicit ``MlflowClient`` (no fluent API, no process-wide tracking URI), so
the same code serves the embedded SQLite store and a tracking server.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ast_model.config import ConfigError
from pipelines.gate import CHAMPION, GateDecision, Score

CHALLENGER_TAG = "challenger"
MODEL_ARTIFACT_NAME = "model"
RESTORER_CODE = Path(__file__).with_name("restorer_model.py")
# What the served model imports: ast_model's runtime dependencies (pyproject.toml) and mlflow itself.
# Their versions are read from requirements.txt, the project's pins.
SERVING_PACKAGES: tuple[str, ...] = ("torch", "numpy", "PyYAML", "tqdm", "scikit-image", "pillow", "mlflow")
_EXAMPLE_SIDE = 8  # the input example stored with the model (and restored once as a load check)


class RegistryError(RuntimeError):
    """A model that cannot be packaged, logged or registered (the message says which step and why)."""


# --------------------------------------------------------------------------------------------------
# Packaging
# --------------------------------------------------------------------------------------------------
def pinned_requirements(requirements: str | Path, packages: Sequence[str] = SERVING_PACKAGES) -> list[str]:
    """``name==version`` for each of ``packages``, with the versions pinned in a requirements file.

    Args:
        requirements: e.g. ``requirements.txt`` (lines ``name==version``; comments and options ignored).
        packages: the distributions the served model needs.

    Returns:
        The pins, in ``packages`` order.

    Raises:
        ConfigError: the file is unreadable, or a package has no ``==`` pin in it (all named).
    """
    try:
        lines = Path(requirements).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{requirements}: cannot read the pinned requirements ({exc})") from exc
    pins: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if match:
            pins[_canonical(match.group(1))] = f"{match.group(1)}=={match.group(3)}"
    missing = [p for p in packages if _canonical(p) not in pins]
    if missing:
        raise ConfigError(f"{requirements}: no '==' pin for {', '.join(missing)} (the served model needs them)")
    return [pins[_canonical(p)] for p in packages]


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``PyYAML`` == ``pyyaml``, ``scikit_image`` == ``scikit-image``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _signature() -> Any:
    """Optional params ``ensemble`` and ``tile``; no input schema: the model takes an ``(H, W, 3)`` float
    array or ``{"png": base64 image file}`` and checks them itself (``pipelines.restorer_model``), which a
    single MLflow schema cannot express."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    params = ParamSchema([ParamSpec("ensemble", "boolean", False), ParamSpec("tile", "long", 0)])
    return ModelSignature(inputs=None, outputs=None, params=params)


def example_image(side: int = _EXAMPLE_SIDE) -> np.ndarray:
    """A small smooth ``(side, side, 3)`` float32 image in [0, 1] (the model's stored input example)."""
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    return np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.full((side, side), 0.5, np.float32)], axis=-1
    ).astype(np.float32)


def save_restorer(
    checkpoint: str | Path,
    dest: str | Path,
    *,
    pip_requirements: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    mlflow_model: Any = None,
) -> Path:
    """Write the restorer pyfunc into ``dest`` and check that it loads and restores an image.

    Args:
        checkpoint: a project checkpoint (``ast_model.save_checkpoint``); stored as the artifact
            ``checkpoint``, which ``ast-restore --model models:/...`` loads directly.
        dest: a folder that does not exist yet.
        pip_requirements: exact pins (:func:`pinned_requirements`); given explicitly, so MLflow does not
            infer them (slow, and it would pin whatever happens to be installed).
        metadata: plain data stored in the ``MLmodel`` file (variant, experiment, ...).
        mlflow_model: an ``mlflow.models.Model`` carrying the logged model's ids (see :func:`log_restorer`).

    Returns:
        ``dest``.

    Raises:
        RegistryError: the model cannot be saved, or the saved model does not restore its example image.
    """
    import mlflow.pyfunc

    import ast_model

    dest = Path(dest)
    example = example_image()
    with tempfile.TemporaryDirectory(prefix="ast-code-") as tmp:
        # Ship the library with the model (MLflow code_paths): the served model then needs only the pinned
        # requirements, and it runs the code that matches the weights, not whatever is installed later.
        code = Path(tmp) / "ast_model"
        shutil.copytree(Path(ast_model.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        try:
            mlflow.pyfunc.save_model(
                path=str(dest),
                python_model=str(RESTORER_CODE),
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(code)],
                signature=_signature(),
                input_example=example,
                pip_requirements=list(pip_requirements),
                metadata=dict(metadata or {}),
                mlflow_model=mlflow_model,
            )
        except Exception as exc:  # MlflowException, OSError, an import error in the model code
            raise RegistryError(f"cannot save the restorer pyfunc for {checkpoint}: {exc}") from exc
    for cache in dest.rglob("__pycache__"):  # created when MLflow imported the model code to validate it
        shutil.rmtree(cache, ignore_errors=True)
    _check_restores(dest, example)
    return dest


def _check_restores(model_dir: Path, example: np.ndarray) -> None:
    """Load the saved pyfunc as a server would and restore the example: never register a broken model."""
    import mlflow.pyfunc

    try:
        out = np.asarray(mlflow.pyfunc.load_model(str(model_dir)).predict(example))
    except Exception as exc:
        raise RegistryError(f"the saved model at {model_dir} does not load or restore: {exc}") from exc
    if out.shape != example.shape or not np.all(np.isfinite(out)):
        raise RegistryError(
            f"the saved model returned shape {out.shape} (finite: {np.all(np.isfinite(out))}) "
            f"for a {example.shape} image"
        )


# --------------------------------------------------------------------------------------------------
# Logging and registering
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRestorer:
    """A restorer stored in MLflow: ``models:/<model_id>`` (MLflow 3 logged model) of run ``run_id``."""

    model_id: str
    run_id: str

    @property
    def uri(self) -> str:
        """The logged model's URI."""
        return f"models:/{self.model_id}"


def log_restorer(
    client: Any,
    *,
    run_id: str,
    checkpoint: str | Path,
    pip_requirements: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> LoggedRestorer:
    """Package ``checkpoint`` as the restorer pyfunc and log it as a model of run ``run_id``.

    What ``mlflow.pyfunc.log_model`` does, through ``client``: create a logged model (PENDING) linked to
    the run, save the pyfunc with the logged model's ids in its ``MLmodel``, upload it, mark it READY
    (FAILED on any error, so no half-logged model looks usable).

    Args:
        client: an ``MlflowClient``.
        run_id: the training's run (the model appears among its outputs).
        checkpoint: the project checkpoint to package.
        pip_requirements: exact pins.
        metadata: stored in ``MLmodel``.
        tags: tags of the logged model.

    Returns:
        The :class:`LoggedRestorer`.

    Raises:
        RegistryError: any step failed.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(
            experiment_id, name=MODEL_ARTIFACT_NAME, source_run_id=run_id, tags=dict(tags or {})
        )
    except Exception as exc:
        raise RegistryError(f"cannot create a logged model in run {run_id}: {exc}") from exc
    try:
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        ids = Model(
            artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id, model_id=logged.model_id
        )
        with tempfile.TemporaryDirectory(prefix="ast-pyfunc-") as tmp:
            local = save_restorer(
                checkpoint,
                Path(tmp) / MODEL_ARTIFACT_NAME,
                pip_requirements=pip_requirements,
                metadata=metadata,
                mlflow_model=ids,
            )
            client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, "READY")
    except BaseException as exc:
        try:
            client.finalize_logged_model(logged.model_id, "FAILED")
        except Exception:  # keep the original error
            pass
        if isinstance(exc, RegistryError) or not isinstance(exc, Exception):
            raise
        raise RegistryError(f"cannot log the restorer model of run {run_id}: {exc}") from exc
    return LoggedRestorer(logged.model_id, run_id)


def _ensure_registered_model(client: Any, name: str, description: str) -> Any:
    """The registered model ``name``, created if absent (tolerating a concurrent creation)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        return client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_registered_model(name)


def register_version(
    client: Any,
    name: str,
    logged: LoggedRestorer,
    *,
    tags: Mapping[str, str],
    description: str = "",
) -> Any:
    """Create a new version of registered model ``name`` from a logged restorer.

    Args:
        client: an ``MlflowClient``.
        name: the registered model (created if absent).
        logged: from :func:`log_restorer`.
        tags: version tags (the ``test.*`` score tags among them: the gate of later versions reads them).
        description: the version's description.

    Returns:
        The ``ModelVersion`` (status READY).

    Raises:
        RegistryError: the registry refused.
    """
    try:
        _ensure_registered_model(
            client,
            name,
            "AST (Adaptive Sparse Transformer) image restoration; input: one (H, W, 3) float32 RGB image in [0, 1]",
        )
        return client.create_model_version(
            name,
            source=logged.uri,
            run_id=logged.run_id,
            tags=dict(tags),
            description=description,
            model_id=logged.model_id,
        )
    except Exception as exc:
        raise RegistryError(f"cannot register {logged.uri} as a version of {name!r}: {exc}") from exc


def current_champion(client: Any, name: str, alias: str = CHAMPION) -> tuple[Any, Score | None] | None:
    """The version holding ``alias`` and its test score (None: no such alias yet).

    Returns:
        ``(ModelVersion, Score or None)``; the score is None when the version has no ``test.*`` tags.
    """
    version = client.get_registered_model(name).aliases.get(alias)
    if version is None:
        return None
    holder = client.get_model_version(name, str(version))
    return holder, Score.from_tags(holder.tags)


def apply_decision(client: Any, name: str, version: str, decision: GateDecision, alias: str = CHAMPION) -> None:
    """Record the gate's decision on the version; move ``alias`` to it when promoted.

    Every version gets ``gate.decision`` and ``gate.reason``; one not promoted also gets the tag
    ``challenger`` = the reason.
    """
    if decision.promote:  # the alias first: it is the state that matters if a later call fails
        client.set_registered_model_alias(name, alias, version)
    else:
        client.set_model_version_tag(name, version, CHALLENGER_TAG, decision.reason[:5000])
    client.set_model_version_tag(name, version, "gate.decision", alias if decision.promote else CHALLENGER_TAG)
    client.set_model_version_tag(name, version, "gate.reason", decision.reason[:5000])
