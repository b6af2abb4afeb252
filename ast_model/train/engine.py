"""The DeepSpeed engine around an AST model: build it, set its LR, read its fp32 weights, export them.

DeepSpeed owns the optimizer (AdamW), ZeRO partitioning, mixed precision and gradient accumulation and
clipping; the loop (:mod:`ast_model.train.loop`) owns everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ast_model import create_model, save_checkpoint

log = logging.getLogger(__name__)


def build_engine(model: nn.Module, ds_config: Mapping[str, Any]) -> Any:
    """``deepspeed.initialize`` with the optimizer from ``ds_config`` (the process group must exist).

    Args:
        model: the freshly built model (DeepSpeed broadcasts rank 0's weights to the other ranks).
        ds_config: from :func:`ast_model.train.config.deepspeed_config`.

    Returns:
        The DeepSpeed engine.
    """
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=dict(ds_config))
    return engine


def set_lr(engine: Any, lr: float) -> None:
    """Set the learning rate of every parameter group (the loop computes it per step)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def compute_dtype(engine: Any) -> torch.dtype:
    """The dtype the engine's module computes in (bf16 / fp16 / fp32): inputs are cast to it."""
    return next(engine.module.parameters()).dtype


def master_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The full fp32 weights (a collective under ZeRO: every rank must call it).

    With bf16 / fp16 the module holds half-precision copies; the optimizer keeps the fp32 masters
    (partitioned over ranks under ZeRO 1/2). Exporting the half copies would round every weight.

    Returns:
        ``state_dict`` of the module with fp32 masters for parameters (on CPU), persistent buffers as they are.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    fallback = _unfused_masters(engine)
    out: dict[str, torch.Tensor] = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p)
        if full is None:
            full = fallback.get(id(p))
        if full is None:
            if p.dtype != torch.float32:
                log.warning("no fp32 master for %s: exporting the %s weights", name, p.dtype)
            full = p
        out[name] = full.detach().float().cpu().clone()
    persistent = engine.module.state_dict().keys()  # non-persistent buffers (DropPath.keep) are not exported
    for name, b in engine.module.named_buffers():
        if name in persistent:
            out[name] = b.detach().cpu().clone()
    return out


def _unfused_masters(engine: Any) -> dict[int, torch.Tensor]:
    """Half param id -> fp32 master for DeepSpeed's (un)fused fp16/bf16 optimizers at ZeRO 0."""
    opt = engine.optimizer
    halves, masters = getattr(opt, "fp16_groups", None), getattr(opt, "fp32_groups", None)
    if not halves or not masters or len(halves) != len(masters):
        return {}
    out = {}
    for hg, mg in zip(halves, masters, strict=True):
        if isinstance(mg, torch.Tensor) or len(hg) != len(mg):  # flat masters (fused optimizer): not mapped
            return {}
        out.update({id(h): m for h, m in zip(hg, mg, strict=True)})
    return out


def export_weights(
    state: Mapping[str, torch.Tensor],
    model_name: str,
    model_kwargs: Mapping[str, Any],
    path: str | Path,
    meta: Mapping[str, Any],
) -> Path:
    """Write ``state`` in the project checkpoint format (loadable by ``ast_model`` without DeepSpeed).

    Args:
        state: fp32 state dict from :func:`master_state_dict`.
        model_name: registered variant.
        model_kwargs: the overrides the model was built with.
        path: destination file (written atomically).
        meta: step, metrics, data version, ... kept in the checkpoint.

    Returns:
        The path written.
    """
    model = create_model(model_name, **dict(model_kwargs))
    model.load_state_dict(dict(state), strict=True)
    return save_checkpoint(model, path, meta=dict(meta))
