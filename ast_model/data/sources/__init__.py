"""Readers of the real datasets in their distributed and common redistributed layouts.

Each reader module has ``DEFAULT_SPLITS`` (split -> subset) and ``scan(root, subset) -> (pairs,
problems)``. :func:`read_split` adds the file checks and raises one :class:`SourceError` listing
everything that is wrong.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Literal

from ast_model.data.config import DatasetSpec
from ast_model.data.sources import agan, densehaze, folders, spad
from ast_model.data.sources.base import PairInfo, PairRef, SourceError, check_pairs

READERS: dict[str, ModuleType] = {"spad": spad, "agan": agan, "densehaze": densehaze, "folders": folders}

__all__ = ["READERS", "PairInfo", "PairRef", "SourceError", "check_pairs", "read_split", "splits_of"]


def splits_of(spec: DatasetSpec) -> dict[str, str]:
    """The split -> subset mapping of a real dataset: params' ``splits``, else the reader's defaults.

    For ``folders`` the defaults keep only the sub-folders that exist (a dataset without ``val/`` is
    fine); if none exists the caller gets the full default mapping and ``read_split`` reports it.

    Args:
        spec: a dataset spec with a real source.

    Returns:
        split -> subset.
    """
    if spec.splits:
        return dict(spec.splits)
    defaults = dict(READERS[spec.source].DEFAULT_SPLITS)
    if spec.source == "folders":
        present = {k: v for k, v in defaults.items() if (Path(spec.root) / v).is_dir()}
        return present or defaults
    return defaults


def read_split(
    spec: DatasetSpec, split: str, subset: str, *, check: Literal["full", "header"] = "full", name: str = ""
) -> list[PairInfo]:
    """Find, open and check every pair of one split.

    Args:
        spec: the dataset spec (real source).
        split: the split name (for messages).
        subset: the reader-specific subset (see :func:`splits_of`).
        check: ``full`` decodes every image, ``header`` reads sizes and modes.
        name: the dataset name (for messages).

    Returns:
        The checked pairs, in the reader's order (list line, index or name).

    Raises:
        SourceError: listing every missing partner, unreadable file, odd channel layout and size mismatch.
    """
    root = Path(spec.root)
    where = f"dataset {name or spec.source} ({spec.source} at {root}), split {split} ({subset})"
    if not root.is_dir():
        raise SourceError(where, [f"{root}: dataset folder not found"])
    pairs, problems = READERS[spec.source].scan(root, subset)
    infos, file_problems = check_pairs(pairs, mode=check, desc=f"{name}/{split}")
    problems += file_problems
    if not problems and not infos:
        problems.append(f"{root}: no pairs found for subset {subset!r}")
    if problems:
        raise SourceError(where, problems)
    return infos
