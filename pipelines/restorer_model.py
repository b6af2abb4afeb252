"""The registered model's code: an MLflow pyfunc that restores one image (MLflow "models from code").

This file is not imported by the pipeline. :mod:`pipelines.model_registry` hands its *path* to
``mlflow.pyfunc.save_model(python_model=...)``; MLflow copies it into the model folder and executes it when
the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``). That is why it ends with
``set_model(...)`` at module level: it is MLflow's entry point, not an import side effect of the project.
The ``ast_model`` package travels inside the model (``code/``) and the project checkpoint is the artifact
``checkpoint``, so a served model needs only its pinned requirements, not this repository.

Input: one image as an ``(H, W, 3)`` float32 array, RGB in [0, 1] (over REST: ``{"inputs": [[[r, g, b],
...], ...]}``). Output: the restored ``(H, W, 3)`` float32 array in [0, 1], same size. Params (optional):
``ensemble`` (bool, the 8-way self-ensemble) and ``tile`` (int; 0 = automatic: whole image when it fits in
memory, else tiles).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
_RANGE_TOL = 1e-3  # float inputs may overshoot [0, 1] by rounding noise; 0-255 data would be far out


class ImageRestorer(PythonModel):
    """Restores images with the AST model stored in the ``checkpoint`` artifact."""

    def load_context(self, context: Any) -> None:
        """Load the project checkpoint (on CUDA when available, else the CPU)."""
        import torch

        from ast_model.checkpoint import load_checkpoint

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], map_location=self.device)

    # ``model_input`` has no type hint on purpose: MLflow turns that hint into input validation, and the
    # only accepted form, ``list[...]``, rejects the array the signature (``pipelines.model_registry``) defines.
    # The price is MLflow's one-line "Add type hints to the `predict` method" warning when it loads this.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> np.ndarray:  # noqa: ANN001
        """Restore one ``(H, W, 3)`` float image in [0, 1]; returns the same shape, float32 in [0, 1]."""
        from ast_model.eval.restore import RestoreOptions, restore_image

        image = np.asarray(model_input)
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise MlflowException.invalid_parameter_value(
                f"expected one (H, W, 3) RGB image, got an array of shape {image.shape}"
            )
        image = image.astype(np.float32, copy=False)
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise MlflowException.invalid_parameter_value(
                f"pixel values must lie in [0, 1] (got [{lo:.4g}, {hi:.4g}]; 8-bit data: divide by 255)"
            )
        params = params or {}
        tile = int(params.get("tile", 0))
        if tile < 0:
            raise MlflowException.invalid_parameter_value(f"tile must be >= 0 (0 = automatic), got {tile}")
        options = RestoreOptions(tile=tile or "auto", ensemble=bool(params.get("ensemble", False)))
        return restore_image(self.model, np.clip(image, 0.0, 1.0), options, self.device)


set_model(ImageRestorer())
