"""Score a model on paired test images: the metrics dictionary the ``evaluate`` stage writes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ast_model.artifacts import ImageScore, Scores
from ast_model.eval.metrics import Protocol, psnr, ssim
from ast_model.eval.restore import RestoreOptions, restore_image

__all__ = ["evaluate_pairs"]

# Called once per pair with (key, degraded, restored, target), all (H, W, 3) float32 in [0, 1]; e.g. to
# save sample grids without restoring twice.
ResultCallback = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]


def _as_float(image: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 1] ``(H, W, 3)`` -> float32 [0, 1] (the model's input convention)."""
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)


def evaluate_pairs(
    model: nn.Module,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    protocol: Protocol = "float",
    y_channel: bool = False,
    crop_border: int = 0,
    options: RestoreOptions | None = None,
    device: torch.device | str | None = None,
    on_result: ResultCallback | None = None,
    progress: bool = False,
) -> Scores:
    """Restore every degraded image and score it, and the degraded input itself, against its target.

    Args:
        model: maps ``(B, 3, H, W)`` to the same shape (see :func:`ast_model.eval.restore.restore_image`).
        pairs: ``(key, degraded, target)`` triples; images ``(H, W, 3)`` RGB, uint8 or float in [0, 1].
        protocol: metric protocol (:mod:`ast_model.eval.metrics`), recorded in the result.
        y_channel: score BT.601 luma instead of RGB.
        crop_border: pixels ignored at every side.
        options: restoration options (tiling, self-ensemble, precision).
        device: where the model runs; default: its parameters' device.
        on_result: optional callback per pair (see :data:`ResultCallback`).
        progress: show a progress bar.

    Returns:
        :class:`~ast_model.artifacts.Scores`: means over the images (``input_*`` score the degraded input,
        the baseline; a PSNR is ``inf`` for identical images, and so is a mean containing one) and one
        :class:`~ast_model.artifacts.ImageScore` per pair, in input order.

    Raises:
        ValueError: no pairs, or a pair whose images do not match (see the metric functions).
    """
    score_psnr = functools.partial(psnr, y_channel=y_channel, crop_border=crop_border, protocol=protocol)
    score_ssim = functools.partial(ssim, y_channel=y_channel, crop_border=crop_border, protocol=protocol)
    per_image: list[ImageScore] = []
    for key, degraded, target in tqdm(pairs, unit="img", disable=not progress, desc="evaluate"):
        degraded = _as_float(np.asarray(degraded))
        restored = restore_image(model, degraded, options, device)
        per_image.append(
            ImageScore(
                key=str(key),
                psnr=score_psnr(restored, target),
                ssim=score_ssim(restored, target),
                input_psnr=score_psnr(degraded, target),
                input_ssim=score_ssim(degraded, target),
            )
        )
        if on_result is not None:
            on_result(str(key), degraded, restored, _as_float(np.asarray(target)))
    if not per_image:
        raise ValueError("evaluate_pairs: no image pairs to evaluate")
    names = ("psnr", "ssim", "input_psnr", "input_ssim")
    means = {name: float(np.mean([getattr(row, name) for row in per_image])) for name in names}
    return Scores(
        **means,
        protocol=protocol,
        y_channel=y_channel,
        crop_border=crop_border,
        count=len(per_image),
        per_image=per_image,
    )
