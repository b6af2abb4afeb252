"""The onnxruntime backend: an exported AST (``ast_model.export``) behind the ``nn.Module`` interface.

:class:`OnnxRestorer` maps ``(B, 3, H, W)`` to ``(B, 3, H, W)`` like the PyTorch model, so everything in
:mod:`ast_model.eval.restore` (tiling with blending, the self-ensemble, the streaming of huge images) runs
on it unchanged: ``restore_image(OnnxRestorer("model.onnx"), image)``. It has no parameters, so the
restore code treats it as a CPU model; ``pad_multiple`` (from the file's metadata) keeps automatic tile
sides on multiples of the padding, as for the PyTorch model.

onnxruntime is imported when a restorer is created, not with this module: it is an optional dependency
(``pip install ast-pipeline[onnx]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxRestorer"]


class OnnxRestorer(nn.Module):
    """An exported ``.onnx`` restorer run by onnxruntime on the CPU.

    Args:
        path: the file written by :func:`ast_model.export.export_onnx`.
        threads: intra-op threads (default: ``torch.get_num_threads()``, so both backends use the same
            count in a side-by-side comparison).

    Raises:
        ImportError: onnxruntime is not installed (the message says how to install it).
        ValueError: the file cannot be loaded as an ONNX model.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("the onnxruntime backend needs onnxruntime: pip install 'ast-pipeline[onnx]'") from exc
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k.split(".", 1)[1]: v for k, v in meta.items() if k.startswith("ast_pipeline.")}
        self.variant = self.metadata.get("variant")
        self._input = self.session.get_inputs()[0].name
        self._pad_multiple = int(self.metadata.get("pad_multiple", 1))

    @property
    def pad_multiple(self) -> int:
        """The padding multiple the graph pads to (tile sides are rounded to it)."""
        return self._pad_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, H, W)`` float32 on ``x``'s device."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input (B, 3, H, W), got {tuple(x.shape)}")
        # A view for the usual contiguous CPU float32 input; a copy only otherwise (e.g. a flipped ensemble view).
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self._input: array})[0]  # (B, 3, H, W)
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, variant={self.variant!r}"
