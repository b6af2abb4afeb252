"""Generic paired folders: ``<root>/<subset>/input/NAME.ext`` with ``<root>/<subset>/target/NAME.ext``.

Matched by file name without extension (so ``x.jpg`` pairs with ``x.png``). The way in for any dataset
this project has no dedicated reader for, including redistributed copies of the paper's three.
``subset`` ``.`` means ``input/`` and ``target/`` sit directly in the root.
"""

from __future__ import annotations

from pathlib import Path

from ast_model.data.sources.base import PairRef, find_pair_dirs, list_images, sanitize_key

DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
INPUT_DIRS = ("input", "inputs", "degraded", "lq")
TARGET_DIRS = ("target", "targets", "gt", "clean", "hq")


def _by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in found:
            problems.append(f"{path} and {found[path.stem]}: two files named {path.stem!r}")
            continue
        found[path.stem] = path
    return found


def scan(root: Path, subset: str) -> tuple[list[PairRef], list[str]]:
    """Pair ``input/`` and ``target/`` of one subset by name.

    Args:
        root: the dataset root.
        subset: sub-folder holding ``input/`` and ``target/`` (``.`` for the root itself).

    Returns:
        ``(pairs, problems)`` with pairs ordered by name.
    """
    base = root / subset
    dirs = find_pair_dirs(base, INPUT_DIRS, TARGET_DIRS)
    if isinstance(dirs, list):
        return [], dirs
    in_dir, tg_dir = dirs
    problems: list[str] = []
    inputs, targets = _by_stem(in_dir, problems), _by_stem(tg_dir, problems)
    for stem in sorted(set(inputs) - set(targets)):
        problems.append(f"{inputs[stem]}: missing partner (no {stem}.* in {tg_dir})")
    for stem in sorted(set(targets) - set(inputs)):
        problems.append(f"{targets[stem]}: missing partner (no {stem}.* in {in_dir})")
    pairs: list[PairRef] = []
    keys: dict[str, str] = {}  # sample key -> the stem it came from
    for stem in sorted(set(inputs) & set(targets)):
        key = sanitize_key(stem)
        if key in keys:
            problems.append(f"{inputs[stem]} and {inputs[keys[key]]}: both map to sample key {key!r}")
            continue
        keys[key] = stem
        pairs.append(PairRef(key, inputs[stem], targets[stem], {"name": stem}))
    return pairs, problems
