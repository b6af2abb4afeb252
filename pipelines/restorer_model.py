"""The registered model's code: an MLflow pyfunc that restores one image (MLflow "models from code").

This file is not imported by the pipeline. :mod:`pipelines.model_registry` hands its *path* to
``mlflow.pyfunc.save_model(python_model=...)``; MLflow copies it into the model folder and executes it when
the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``). That is why it ends with
``set_model(...)`` at module level: it is MLflow's entry point, not an import side effect of the project.
The ``ast_model`` package travels inside the model (``code/``) and the project checkpoint is the artifact
``checkpoint``, so a served model needs only its pinned requirements, not this repository.

Input, one image in either form (docs/deploy.md has the REST requests):

- an encoded image file, base64: ``{"inputs": {"png": "<base64>"}}`` (PNG, JPEG, ... whatever Pillow decodes;
  grey, 16-bit and RGBA converted as ``ast-restore`` converts them). The reply is the restored 8-bit PNG,
  base64: ``{"predictions": {"png": "<base64>"}}``, byte for byte the pixels ``ast-restore`` writes;
- an ``(H, W, 3)`` float array, RGB in [0, 1]: ``{"inputs": [[[r, g, b], ...], ...]}``. The reply is the
  restored ``(H, W, 3)`` float32 array in [0, 1].

Params (optional): ``ensemble`` (bool, the 8-way self-ensemble) and ``tile`` (int; 0 = automatic, as
``ast-restore --tile auto``: the whole image when it fits in memory, tiles of at most 384 px on the CPU
for larger ones). A request that is not one of these gets a 400 whose message says what was expected.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

CHECKPOINT_ARTIFACT = "checkpoint"
PNG_KEY = "png"  # {"inputs": {"png": <base64 image file>}} -> {"predictions": {"png": <base64 PNG>}}
_RANGE_TOL = 1e-3  # float inputs may overshoot [0, 1] by rounding noise; 0-255 data would be far out


class ImageRestorer(PythonModel):
    """Restores images with the AST model stored in the ``checkpoint`` artifact."""

    def load_context(self, context: Any) -> None:
        """Load the project checkpoint (on CUDA when available, else the CPU)."""
        import torch

        from ast_model.checkpoint import load_checkpoint

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], map_location=self.device)

    # ``model_input`` has no type hint on purpose: MLflow turns that hint into input validation, which
    # would reject one of the two accepted forms (an array, or a dict holding a base64 image file).
    # The price is MLflow's one-line "Add type hints to the `predict` method" warning when it loads this.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # noqa: ANN001
        """Restore one image: ``{"png": base64 file}`` -> ``{"png": base64 PNG}``, or an ``(H, W, 3)`` float
        array in [0, 1] -> the same shape, float32 in [0, 1] (module docstring)."""
        from ast_model.eval.restore import restore_image

        options = self._options(params or {})
        if isinstance(model_input, dict):
            image = _decode_request_image(model_input)  # (H, W, 3) uint8, or float32 for 16-bit files
            restored = restore_image(self.model, image, options, self.device, out_dtype=np.uint8)
            return {PNG_KEY: base64.b64encode(_encode_png(restored)).decode("ascii")}
        image = _checked_array(model_input)
        return restore_image(self.model, image, options, self.device)

    def _options(self, params: dict[str, Any]) -> Any:
        """``ast-restore``'s defaults (auto tiling, capped tiles on the CPU) with the request's params."""
        from ast_model.eval.restore import CPU_AUTO_TILE, RestoreOptions

        tile = int(params.get("tile", 0))
        if tile < 0:
            raise MlflowException.invalid_parameter_value(f"tile must be >= 0 (0 = automatic), got {tile}")
        return RestoreOptions(
            tile=tile or "auto",
            ensemble=bool(params.get("ensemble", False)),
            max_tile=CPU_AUTO_TILE if self.device.type == "cpu" else None,
        )


def _decode_request_image(model_input: dict[str, Any]) -> np.ndarray:
    """The image file carried base64 under ``png`` (400 with the reason otherwise)."""
    from ast_model.eval.images import ImageReadError, read_image

    if set(model_input) != {PNG_KEY}:
        raise MlflowException.invalid_parameter_value(
            f'expected {{"inputs": {{"{PNG_KEY}": "<base64 image file>"}}}}, got the key(s) {sorted(model_input)}'
        )
    value = np.asarray(model_input[PNG_KEY])
    if value.ndim != 0 or not isinstance(value.item(), str):
        raise MlflowException.invalid_parameter_value(f'"{PNG_KEY}" must be one base64 string (one image per request)')
    try:
        data = base64.b64decode(value.item(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MlflowException.invalid_parameter_value(f'"{PNG_KEY}" is not valid base64 ({exc})') from None
    try:
        return read_image(io.BytesIO(data), keep_uint8=True)
    except ImageReadError as exc:
        raise MlflowException.invalid_parameter_value(
            f'"{PNG_KEY}" does not hold an image file Pillow can decode ({exc.__cause__ or exc})'
        ) from None


def _encode_png(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``(H, W, 3)`` uint8 pixels."""
    from ast_model.data.files import encode_png

    return encode_png(image)


def _checked_array(model_input: Any) -> np.ndarray:
    """An ``(H, W, 3)`` float32 image in [0, 1] (400 with the reason otherwise)."""
    try:
        image = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError):
        raise MlflowException.invalid_parameter_value(
            f'expected an (H, W, 3) array of numbers in [0, 1] or {{"{PNG_KEY}": "<base64 image file>"}}'
        ) from None
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise MlflowException.invalid_parameter_value(
            f"expected one (H, W, 3) RGB image, got an array of shape {image.shape}"
        )
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise MlflowException.invalid_parameter_value(
            f"pixel values must lie in [0, 1] (got [{lo:.4g}, {hi:.4g}]; 8-bit data: divide by 255)"
        )
    return np.clip(image, 0.0, 1.0)


set_model(ImageRestorer())
