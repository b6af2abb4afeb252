"""Dense-Haze (NTIRE 2019 real dense haze): ``NN_hazy.png`` with ``NN_GT.png``, NN = 01..55.

Files are found anywhere under the root (the distribution puts them in ``hazy/`` and ``GT/``;
redistributions use ``{train_dense,valid_dense}/{input,gt}/`` or one flat folder) and paired by the
number NN. A split is a number range; the default follows the challenge: 01-45 train, 46-50 validation,
51-55 test.
"""

from __future__ import annotations

import re
from pathlib import Path

from ast_model.data.files import IMAGE_SUFFIXES
from ast_model.data.sources.base import PairRef

DEFAULT_SPLITS = {"train": "1-45", "val": "46-50", "test": "51-55"}
_NAME = re.compile(r"^(\d+)_(hazy|GT)$", re.IGNORECASE)


def parse_range(text: str) -> range:
    """``"1-45"`` -> range(1, 46); ``"7"`` -> range(7, 8).

    Args:
        text: an inclusive number range.

    Returns:
        The range.

    Raises:
        ValueError: not of the form ``A-B`` or ``A`` with A <= B.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise ValueError(f"Dense-Haze split {text!r}: expected an inclusive number range like '1-45'")
    lo = int(match.group(1))
    hi = int(match.group(2) or lo)
    if hi < lo:
        raise ValueError(f"Dense-Haze split {text!r}: range end before its start")
    return range(lo, hi + 1)


def scan(root: Path, subset: str) -> tuple[list[PairRef], list[str]]:
    """Pair the images whose number lies in ``subset``.

    Args:
        root: the Dense-Haze root.
        subset: an inclusive number range (``"51-55"``).

    Returns:
        ``(pairs, problems)`` with pairs ordered by number.
    """
    try:
        wanted = parse_range(subset)
    except ValueError as exc:
        return [], [str(exc)]
    if not root.is_dir():
        return [], [f"{root}: dataset folder not found"]
    found: dict[str, dict[int, Path]] = {"hazy": {}, "gt": {}}
    problems: list[str] = []
    for path in sorted(root.rglob("*")):
        match = _NAME.match(path.stem) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if not match or int(match.group(1)) not in wanted:
            continue
        number, kind = int(match.group(1)), match.group(2).lower()
        if number in found[kind]:
            problems.append(f"{path} and {found[kind][number]}: two {kind} images for number {number:02d}")
            continue
        found[kind][number] = path
    hazy, gt = found["hazy"], found["gt"]
    for n in wanted:
        if n in hazy and n not in gt:
            problems.append(f"{hazy[n]}: missing partner {n:02d}_GT")
        elif n in gt and n not in hazy:
            problems.append(f"{gt[n]}: missing partner {n:02d}_hazy")
    if not hazy and not gt:
        problems.append(f"{root}: no NN_hazy / NN_GT images numbered {subset}")
    pairs = [PairRef(f"densehaze_{n:02d}", hazy[n], gt[n], {"number": n}) for n in wanted if n in hazy and n in gt]
    return pairs, problems
