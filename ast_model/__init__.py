"""AST (Adaptive Sparse Transformer, CVPR 2024) for image restoration.

Public API:
    create_model(name, **overrides), list_models(): build a registered variant (ast_t, ast_b, ...).
    load_official(source, variant=None): a ready model from an official checkpoint or state dict.
    save_checkpoint / load_checkpoint: the project's checkpoint format (config inside).
    count_macs(model, input_shape): multiply-accumulates with torch's flop counter (FLOPs / 2).
"""

from ast_model.checkpoint import load_checkpoint, load_official, save_checkpoint
from ast_model.flops import count_macs
from ast_model.nn.registry import create_model, list_models, model_config

__all__ = [
    "count_macs",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_official",
    "model_config",
    "save_checkpoint",
]
__version__ = "0.1.0"
