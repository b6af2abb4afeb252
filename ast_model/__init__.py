"""AST (Adaptive Sparse Transformer, CVPR 2024) for image restoration.

Public API (loaded on first use, so ``import ast_model`` does not import torch: the data stages and the
metrics never pay for it):
    create_model(name, **overrides), list_models(), model_config(name, **overrides): the network variants
        (ast_t, ast_b, ...).
    load_official(source, variant=None): a ready model from an official checkpoint or state dict.
    save_checkpoint / load_checkpoint: the project's checkpoint format (config inside).
    count_macs(model, input_shape): multiply-accumulates with torch's flop counter (FLOPs / 2).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    # `name as name`: an explicit re-export (PEP 484), so linters do not read these as unused imports.
    from ast_model.checkpoint import load_checkpoint as load_checkpoint
    from ast_model.checkpoint import load_official as load_official
    from ast_model.checkpoint import save_checkpoint as save_checkpoint
    from ast_model.flops import count_macs as count_macs
    from ast_model.nn.variants import create_model as create_model
    from ast_model.nn.variants import list_models as list_models
    from ast_model.nn.variants import model_config as model_config

_EXPORTS = {
    "count_macs": "ast_model.flops",
    "create_model": "ast_model.nn.variants",
    "list_models": "ast_model.nn.variants",
    "load_checkpoint": "ast_model.checkpoint",
    "load_official": "ast_model.checkpoint",
    "model_config": "ast_model.nn.variants",
    "save_checkpoint": "ast_model.checkpoint",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The public API, imported on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ast_model' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
