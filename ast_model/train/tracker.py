"""What the loop reports to an experiment tracker; the MLflow implementation lives in ``pipelines``.

``ast_model`` imports no orchestrator: the loop talks to this protocol, and the training stage passes an
MLflow-backed tracker on rank 0 (:mod:`pipelines.tracking`). Every other rank gets :class:`NullTracker`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np


class Tracker(Protocol):
    """A run in an experiment tracker (rank 0 only)."""

    run_id: str | None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at optimizer step ``step``."""
        ...

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        """Record an image (uint8 HxWx3) under ``key`` at ``step``."""
        ...

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file to the run."""
        ...

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags."""
        ...

    def finish(self, status: str, message: str | None = None) -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED`` (``message`` says why)."""
        ...


class NullTracker:
    """Tracks nothing; carries the run id that rank 0 broadcast (other ranks, tests, benchmarks)."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """No-op."""

    def log_image(self, key: str, image: np.ndarray, step: int) -> None:
        """No-op."""

    def log_artifact(self, path: str | Path) -> None:
        """No-op."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """No-op."""

    def finish(self, status: str, message: str | None = None) -> None:
        """No-op."""
