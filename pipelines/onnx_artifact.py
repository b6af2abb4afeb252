"""The ONNX file of a registered model version: exported, checked against PyTorch, stored beside the pyfunc.

The register stage calls :func:`attach_onnx` after it created a version: the checkpoint is exported with
:func:`ast_model.export.export_onnx` (dynamic batch/height/width, padding inside the graph), the export is
checked with onnxruntime at :data:`ast_model.export.PARITY_SHAPES`, and the file is added to the version's
logged model as ``onnx/model.onnx``. The version gets the tags ``onnx.artifact``, ``onnx.opset`` and
``onnx.parity_max_abs_diff`` (the largest |onnxruntime - PyTorch| over those shapes, fp32).

So ``models:/<task>-ast@champion`` downloads as a folder holding the ONNX file, which runs with onnxruntime
and numpy alone (docs/deploy.md), and ``ast-restore --backend onnxruntime --model models:/...`` uses it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["ONNX_ARTIFACT", "PARITY_LIMIT", "attach_onnx"]

ONNX_ARTIFACT = "onnx/model.onnx"  # inside the logged model's artifacts
# fp32 parity the issue asks for; a larger difference means a broken export: nothing is attached then.
PARITY_LIMIT = 1e-4


def attach_onnx(client: Any, name: str, version: str, model_id: str, checkpoint: str | Path) -> dict[str, Any]:
    """Export ``checkpoint`` to ONNX, check it, and attach it to version ``version`` of ``name``.

    Args:
        client: an ``MlflowClient``.
        name: the registered model.
        version: its version (tags go there).
        model_id: the version's logged model (the file goes into its artifacts, beside the pyfunc).
        checkpoint: the project checkpoint the version was made from.

    Returns:
        ``{"artifact", "opset", "parity_max_abs_diff", "parity", "export_seconds"}``.

    Raises:
        RegistryError: the export failed, its parity is worse than :data:`PARITY_LIMIT`, or MLflow refused.
    """
    from ast_model.checkpoint import load_checkpoint
    from ast_model.export import export_onnx
    from pipelines.model_registry import RegistryError

    model = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="ast-onnx-") as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        path.parent.mkdir(parents=True)
        try:
            result = export_onnx(model, path, metadata={"registered_model": name, "version": str(version)})
        except Exception as exc:  # the exporter raises a zoo of types; the stage reports one line
            raise RegistryError(f"cannot export {name} v{version} to ONNX: {exc}") from exc
        worst = result.max_abs_diff
        if worst is None or not worst <= PARITY_LIMIT:
            raise RegistryError(
                f"ONNX export of {name} v{version}: onnxruntime differs from PyTorch by {worst} "
                f"(limit {PARITY_LIMIT}); not attached"
            )
        tags = {
            "onnx.artifact": ONNX_ARTIFACT,
            "onnx.opset": str(result.opset),
            "onnx.parity_max_abs_diff": f"{worst:.3e}",
        }
        try:
            client.log_model_artifacts(model_id, tmp)  # adds onnx/model.onnx next to the pyfunc's files
            for key, value in tags.items():
                client.set_model_version_tag(name, str(version), key, value)
        except Exception as exc:  # MlflowException, a dead server
            raise RegistryError(f"cannot attach the ONNX file to {name} v{version}: {exc}") from exc
    return {
        "artifact": ONNX_ARTIFACT,
        "opset": result.opset,
        "parity_max_abs_diff": worst,
        "parity": result.parity,
        "export_seconds": round(result.seconds, 1),
    }
