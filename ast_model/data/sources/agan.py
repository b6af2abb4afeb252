"""AGAN-Data / RainDrop (raindrops, Qian et al. CVPR 2018): ``<subset>/data/{i}_rain.png`` with
``<subset>/gt/{i}_clean.png``, subsets ``train``, ``test_a``, ``test_b``.

Pairs by the index ``i`` in the file name (the official code pairs by sorted listing, which breaks as soon
as one file is missing). Accepted redistributions: ``input``/``rain`` for ``data``, ``target``/``clean``
for ``gt``; ``.jpg`` as well as ``.png``; plain ``{i}.png`` names.
"""

from __future__ import annotations

import re
from pathlib import Path

from ast_model.data.sources.base import PairRef, find_pair_dirs, list_images

DEFAULT_SPLITS = {"train": "train", "val": "test_a", "test": "test_a"}
INPUT_DIRS = ("data", "input", "rain")
TARGET_DIRS = ("gt", "target", "clean")
_NAME = re.compile(r"^(\d+)(?:_(rain|clean))?$", re.IGNORECASE)


def _by_index(folder: Path, problems: list[str]) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in list_images(folder):
        match = _NAME.match(path.stem)
        if not match:
            problems.append(f"{path}: name does not match '<index>_rain' / '<index>_clean'")
            continue
        index = int(match.group(1))
        if index in found:
            problems.append(f"{path} and {found[index]}: two files for index {index}")
            continue
        found[index] = path
    return found


def scan(root: Path, subset: str) -> tuple[list[PairRef], list[str]]:
    """Pair the images of one subset by index.

    Args:
        root: the AGAN-Data root (holding ``train``, ``test_a``, ``test_b``).
        subset: the subset folder.

    Returns:
        ``(pairs, problems)`` with pairs ordered by index.
    """
    base = root / subset
    dirs = find_pair_dirs(base, INPUT_DIRS, TARGET_DIRS)
    if isinstance(dirs, list):
        return [], dirs
    in_dir, tg_dir = dirs
    problems: list[str] = []
    inputs, targets = _by_index(in_dir, problems), _by_index(tg_dir, problems)
    for index in sorted(set(inputs) - set(targets)):
        problems.append(f"{inputs[index]}: missing partner (no target with index {index} in {tg_dir})")
    for index in sorted(set(targets) - set(inputs)):
        problems.append(f"{targets[index]}: missing partner (no input with index {index} in {in_dir})")
    pairs = [PairRef(f"{subset}_{i}", inputs[i], targets[i], {"index": i}) for i in sorted(set(inputs) & set(targets))]
    return pairs, problems
