"""Validation during training: PSNR / SSIM over the validation split, split across ranks.

Image ``i`` is scored by rank ``i % world_size``; per-rank sums are added with one collective, so every
rank gets the same means (and takes the same "is this the best model" decision). The metrics are the
project's one implementation (:mod:`ast_model.eval.metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ast_model.eval.metrics import psnr, ssim
from ast_model.train.config import ValidationConfig
from ast_model.train.distributed import DistInfo, all_sum

# An image restored exactly scores PSNR = inf; cap it so one such image cannot make the mean infinite.
PSNR_CAP = 100.0


@dataclass
class ValResult:
    """Mean metrics over the validation images, and rank 0's sample restorations.

    Attributes:
        psnr: mean PSNR in dB (NaN when there were no images).
        ssim: mean SSIM.
        count: images scored.
        input_psnr: mean PSNR of the degraded input (the baseline to beat).
        input_ssim: mean SSIM of the degraded input.
        samples: ``(key, image)`` with image = input | restored | target side by side, uint8 HxWx3.
    """

    psnr: float
    ssim: float
    count: int
    input_psnr: float
    input_ssim: float = float("nan")
    samples: list[tuple[str, np.ndarray]] = field(default_factory=list)


def centre_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Centre crop of ``x`` (..., H, W) to ``size`` (no-op for None or smaller images)."""
    if size is None:
        return x
    h, w = x.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return x[..., top : top + size, left : left + size]


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)  # (H, W, 3)


@torch.no_grad()
def validate(
    module: torch.nn.Module,
    samples: Iterable[dict[str, Any]],
    cfg: ValidationConfig,
    info: DistInfo,
    *,
    dtype: torch.dtype = torch.float32,
) -> ValResult:
    """Score ``module`` on the validation samples (a collective: every rank calls it).

    Args:
        module: the model (DeepSpeed's ``engine.module``); put in eval mode and back in train mode.
        samples: every validation sample once, in the same order on every rank.
        cfg: crop, image limit, Y or RGB, samples to keep.
        info: this rank.
        dtype: the module's compute dtype (inputs are cast to it).

    Returns:
        The means over all ranks' images; ``samples`` filled on rank 0 only.
    """
    was_training = module.training
    module.eval()
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # psnr, ssim, count, input psnr, input ssim
    kept: list[tuple[str, np.ndarray]] = []
    try:
        for i, sample in enumerate(samples):
            if cfg.max_images is not None and i >= cfg.max_images:
                break
            if i % info.world_size != info.rank:
                continue
            x = centre_crop(sample["input"], cfg.crop)
            y = centre_crop(sample["target"], cfg.crop)
            out = _hwc(module(x.to(info.device, dtype)))  # clamped to [0, 1], as the official validation
            inp, tgt = _hwc(x), _hwc(y)
            sums[0] += min(psnr(out, tgt, y_channel=cfg.y_channel), PSNR_CAP)
            sums[1] += ssim(out, tgt, y_channel=cfg.y_channel)
            sums[2] += 1
            sums[3] += min(psnr(inp, tgt, y_channel=cfg.y_channel), PSNR_CAP)
            sums[4] += ssim(inp, tgt, y_channel=cfg.y_channel)
            if info.is_main and len(kept) < cfg.sample_images:
                strip = np.concatenate([inp, out, tgt], axis=1)
                kept.append((str(sample["key"]), np.rint(strip * 255).astype(np.uint8)))
    finally:
        module.train(was_training)
    total = all_sum(sums, info.device)
    n = int(total[2])
    if n == 0:
        return ValResult(float("nan"), float("nan"), 0, float("nan"), float("nan"), kept)
    return ValResult(total[0] / n, total[1] / n, n, total[3] / n, total[4] / n, kept)
