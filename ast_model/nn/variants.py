"""Named AST variants: small constructors that only set hyper-parameters (timm-style)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ast_model.nn.ast import AST, ASTConfig

# What the official `get_arch` builds (docs/model.md#variants); everything else keeps the ASTConfig
# defaults. Ablation variants are ASTConfig overrides (attention=..., ffn=..., frfn_*=...; docs/ablations.md).
_VARIANTS: dict[str, dict[str, Any]] = {
    "ast_t": dict(embed_dim=16, depths=(2, 2, 2, 2, 2, 2, 2, 2, 2)),  # 6,645,347 params
    "ast_b": dict(embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1)),  # 65,362,455 params
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_VARIANTS)


def model_config(name: str, **overrides: Any) -> ASTConfig:
    """The :class:`ASTConfig` of variant ``name`` with ``overrides`` applied.

    Raises:
        ValueError: unknown variant, or an override that is not an ASTConfig field.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    known = {f.name for f in dataclasses.fields(ASTConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown model option(s) {bad}; known: {sorted(known)}")
    return ASTConfig(**{**_VARIANTS[name], **overrides})


def create_model(name: str, **overrides: Any) -> AST:
    """Build a registered AST variant.

    Args:
        name: ``"ast_t"`` or ``"ast_b"`` (see :func:`list_models`).
        **overrides: any :class:`ASTConfig` field, e.g. ``attention="assa"``, ``ffn="frfn"``,
            ``bottleneck_shift=True``, ``drop_path_rate=0.0``, ``embed_dim=8`` (tiny test models).

    Returns:
        The model, freshly initialised as the official code does, with ``model.variant = name``.
    """
    model = AST(model_config(name, **overrides))
    model.variant = name
    return model
