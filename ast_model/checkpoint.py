"""The one checkpoint format of the project, and conversion of official AST checkpoints.

Project format (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "ast-pipeline", "version": 1, "variant": "ast_t",
     "config": {...ASTConfig fields...}, "state_dict": {...}, "meta": {...}}

State-dict keys never carry ``module.``; they are the official tensor names except for the blocks'
feed-forward, ``mlp`` there and ``ffn`` here. So an official checkpoint is a state dict with a wrapper,
a prefix (``{'epoch', 'state_dict', 'optimizer'}``, keys ``module.*``) and that one renamed attribute,
converted by :func:`convert_official_state_dict` (:func:`official_key` / :func:`project_key` map single
keys). Project checkpoints written before the rename carry ``mlp`` too and load the same way.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ast_model.data.files import atomic_write_bytes
from ast_model.nn.ast import AST, ASTConfig
from ast_model.nn.variants import _VARIANTS, create_model

FORMAT = "ast-pipeline"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def save_checkpoint(model: AST, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (weights + config) atomically in the project format.

    Args:
        model: an :class:`AST` (unwrap DeepSpeed / DDP first).
        path: destination file; its folder is created.
        meta: extra plain data to keep (step, metrics, data version, ...).

    Returns:
        The path written.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "variant": getattr(model, "variant", None),
        "config": model.config.to_dict(),
        "state_dict": state,
        "meta": dict(meta or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # the checkpoint is complete or absent
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load any checkpoint file (project or official) as plain data, with ``weights_only=True``."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # pickle errors, truncated files, non-weights content
        raise CheckpointError(f"{path}: not a readable weights-only torch checkpoint ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> AST:
    """Rebuild the model stored in a project checkpoint (config inside), loaded strictly.

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device for the returned model.

    Returns:
        The model in eval mode; ``model.checkpoint_meta`` holds the stored ``meta``.
    """
    data = read_checkpoint(path)
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an ast-pipeline checkpoint (no format tag); use load_official() for official .pth files"
        )
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not supported (want {VERSION})")
    model = AST(ASTConfig(**data["config"]))
    model.variant = data.get("variant")
    state = {project_key(k): v for k, v in data["state_dict"].items()}  # files from before the mlp -> ffn rename
    load_state_dict_strict(model, state, source=str(path))
    model.checkpoint_meta = data.get("meta", {})
    return model.to(map_location).eval()


# Official tensor-name parts that differ from ours: (official, ours). The block's feed-forward is an
# attribute called `mlp` in the official code, `ffn` here.
_RENAMED = ((".mlp.", ".ffn."),)


def project_key(official: str) -> str:
    """Our name of the tensor an official state dict (without ``module.``) calls ``official``."""
    for theirs, ours in _RENAMED:
        official = official.replace(theirs, ours)
    return official


def official_key(key: str) -> str:
    """The official name of our tensor ``key`` (inverse of :func:`project_key`)."""
    for theirs, ours in _RENAMED:
        key = key.replace(ours, theirs)
    return key


def convert_official_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Official checkpoint (``{'epoch', 'state_dict', 'optimizer'}`` or a bare state dict) -> our keys.

    Strips a ``module.`` prefix (DataParallel) from every key that has one and renames the official
    ``mlp`` attribute to ``ffn`` (:func:`project_key`); keys already in our naming pass unchanged.
    """
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"expected a state dict mapping, got {type(sd).__name__}")
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[project_key(key[len("module.") :] if key.startswith("module.") else key)] = value
    return out


def infer_variant(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Guess the variant from tensor shapes: ``(name, overrides)`` for :func:`create_model`.

    ``embed_dim`` comes from ``input_proj.proj.0.weight`` and the depths from the block indices of each
    stage; a registered variant whose config matches is named, otherwise the closest one with overrides.
    """
    try:
        embed_dim = int(sd["input_proj.proj.0.weight"].shape[0])
    except KeyError:
        raise CheckpointError("cannot infer the variant: 'input_proj.proj.0.weight' is missing") from None
    stages = [f"encoderlayer_{i}" for i in range(4)] + ["conv"] + [f"decoderlayer_{i}" for i in range(4)]
    depths = []
    for stage in stages:
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"{stage}\.blocks\.(\d+)\.", k))}
        depths.append(max(idx) + 1 if idx else 0)
    for name, spec in _VARIANTS.items():
        if spec["embed_dim"] == embed_dim and tuple(spec["depths"]) == tuple(depths):
            return name, {}
    return "ast_t", {"embed_dim": embed_dim, "depths": tuple(depths)}


def load_official(source: str | Path | Mapping[str, Any], variant: str | None = None, **overrides: Any) -> AST:
    """A ready model (eval mode) from an official AST checkpoint or state dict.

    Args:
        source: path to an official ``.pth`` (``{'epoch', 'state_dict', 'optimizer'}``), or that dict,
            or a bare state dict; keys with or without ``module.``.
        variant: ``"ast_t"`` / ``"ast_b"``; inferred from the tensor shapes when None.
        **overrides: ASTConfig overrides (e.g. ``bottleneck_shift=True`` for a model trained at 256).

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped tensors (all listed).
    """
    label = str(source) if isinstance(source, (str, Path)) else "state dict"
    raw = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    sd = convert_official_state_dict(raw)
    if variant is None:
        variant, inferred = infer_variant(sd)
        overrides = {**inferred, **overrides}
    model = create_model(variant, **overrides)
    load_state_dict_strict(model, sd, source=label)
    return model.eval()


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Load ``sd`` into ``model``; any missing, unexpected or mis-shaped tensor fails with one list of all."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: " + ", ".join(missing))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: " + ", ".join(unexpected))
        if shapes:
            parts.append(f"mis-shaped {len(shapes)}: " + "; ".join(shapes))
        raise CheckpointError(f"{source} does not fit the model:\n  " + "\n  ".join(parts))
    model.load_state_dict(sd, strict=True)
