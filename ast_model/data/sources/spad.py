"""SPAD / SPA-Data (real rain streaks, Wang et al. CVPR 2019): pairs listed in text files.

Each line of a list file is ``<rain_path> <gt_path>``, paths relative to the dataset root and usually
written with a leading ``/`` or ``./`` (e.g. ``/real_test_1000/rain/000.png
/real_test_1000/gt/000gt.png``). Pairs come from the lines, never from folder listings.
"""

from __future__ import annotations

from pathlib import Path

from ast_model.data.sources.base import PairRef, duplicate_key_problems, sanitize_key

# The paper reports on the 1000 test pairs and, like the official code, validates on them too.
DEFAULT_SPLITS = {"train": "real_world.txt", "val": "real_test_1000.txt", "test": "real_test_1000.txt"}


def _under_root(root: Path, listed: str) -> Path:
    """A listed path, relative to the root whether or not it starts with ``/`` or ``./``."""
    rel = listed.strip()
    while rel.startswith(("./", "/")):
        rel = rel[2:] if rel.startswith("./") else rel[1:]
    return root / rel


def scan(root: Path, subset: str) -> tuple[list[PairRef], list[str]]:
    """Read the pairs of one list file.

    Args:
        root: the SPAD root (holding the list files and the image folders).
        subset: the list file, relative to ``root`` (e.g. ``real_test_1000.txt``).

    Returns:
        ``(pairs, problems)``: problems name the list file and line (malformed lines, missing files).
    """
    list_file = _under_root(root, subset)
    if not list_file.is_file():
        return [], [f"{list_file}: list file not found (expected '<rain> <gt>' per line)"]
    pairs: list[PairRef] = []
    problems: list[str] = []
    for lineno, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{list_file}:{lineno}"
        if len(fields) != 2:
            problems.append(f"{where}: expected '<rain_path> <gt_path>', got {line.strip()!r}")
            continue
        rain, gt = (_under_root(root, f) for f in fields)
        missing = [f"{kind} {path}" for kind, path in (("input", rain), ("target", gt)) if not path.is_file()]
        if missing:
            problems.append(f"{where}: missing {' and '.join(missing)}")
            continue
        key = sanitize_key(str(rain.relative_to(root).with_suffix("")))
        pairs.append(PairRef(key, rain, gt, {"list_file": subset, "line": lineno}))
    return pairs, problems + duplicate_key_problems(pairs)
