"""What every dataset reader shares: pair references, the collected-problems error, and pair checking.

A reader only *finds* pairs (by list line, index or name: never by sorted order) and reports what it
cannot pair. :func:`check_pairs` then opens every file and reports unreadable images, odd channel
layouts and size mismatches. Problems are collected, never raised one at a time, so a user fixes a broken
dataset in one pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from tqdm import tqdm

from ast_model.data.files import IMAGE_SUFFIXES, ImageFileError, check_mode, sha256_file


class SourceError(ValueError):
    """A dataset that cannot be used as it is; the message lists every problem found.

    Attributes:
        where: the dataset / split the problems belong to.
        problems: one line per problem, each naming the file(s).
    """

    def __init__(self, where: str, problems: Sequence[str]):
        self.where = where
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class PairRef:
    """A degraded/clean pair found by a reader (not opened yet).

    Attributes:
        key: unique within the split; letters, digits, ``_`` and ``-`` only (a WebDataset key).
        input: the degraded image.
        target: the clean image.
        meta: reader-specific extras recorded in the manifest (e.g. the list-file line).
    """

    key: str
    input: Path
    target: Path
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairInfo:
    """A checked pair: its reference plus what the manifest records about the files."""

    ref: PairRef
    width: int
    height: int
    input_sha256: str
    input_bytes: int
    target_sha256: str
    target_bytes: int


def sanitize_key(text: str) -> str:
    """Make a WebDataset-safe key: dots would split it into extensions, slashes into folders.

    Args:
        text: e.g. a relative path without its extension.

    Returns:
        ``text`` with every run of other characters replaced by ``_``.
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sample"


def duplicate_key_problems(pairs: Iterable[PairRef]) -> list[str]:
    """Report keys used by more than one pair (they would collide inside a shard).

    Args:
        pairs: the pairs of one split.

    Returns:
        One problem per duplicated key, naming the files.
    """
    seen: dict[str, PairRef] = {}
    problems = []
    for pair in pairs:
        if pair.key in seen:
            problems.append(f"{pair.input} and {seen[pair.key].input}: both map to sample key {pair.key!r}")
        else:
            seen[pair.key] = pair
    return problems


def find_subdir(parent: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` that exists under ``parent`` as a folder (case-sensitive, in order).

    Args:
        parent: where to look.
        names: accepted spellings, the distributed one first.

    Returns:
        The folder, or None.
    """
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def find_pair_dirs(
    base: Path, input_names: Sequence[str], target_names: Sequence[str]
) -> tuple[Path, Path] | list[str]:
    """The input and target folders of a paired layout, or the problems that prevent finding them.

    Args:
        base: the folder holding both.
        input_names, target_names: accepted spellings of each (see :func:`find_subdir`).

    Returns:
        ``(input_dir, target_dir)``, or a non-empty list of problems naming ``base``.
    """
    in_dir, tg_dir = find_subdir(base, input_names), find_subdir(base, target_names)
    problems = []
    if in_dir is None:
        problems.append(f"{base}: no input folder (one of {', '.join(input_names)})")
    if tg_dir is None:
        problems.append(f"{base}: no target folder (one of {', '.join(target_names)})")
    if in_dir is None or tg_dir is None:
        return problems
    return in_dir, tg_dir


def _inspect(path: Path, mode: Literal["full", "header"]) -> tuple[tuple[int, int] | None, str | None]:
    """Size of an RGB image, or the problem with it."""
    try:
        with Image.open(path) as img:
            check_mode(img, str(path))
            if mode == "full":
                img.load()  # decodes every pixel: catches truncated or corrupt data
            return img.size, None
    except ImageFileError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, f"{path}: missing"
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"{path}: unreadable image ({exc})"


def check_pairs(
    pairs: Sequence[PairRef], *, mode: Literal["full", "header"] = "full", desc: str = "check"
) -> tuple[list[PairInfo], list[str]]:
    """Open every file of every pair; collect sizes, hashes and problems.

    Args:
        pairs: from a reader.
        mode: ``full`` decodes the pixels, ``header`` reads sizes and modes only.
        desc: progress-bar label.

    Returns:
        ``(infos, problems)``: infos of the good pairs, in input order; one problem line per bad file or
        pair (unreadable, odd channels, size mismatch).
    """
    infos: list[PairInfo] = []
    problems: list[str] = []
    for pair in tqdm(pairs, desc=desc, unit="pair", disable=len(pairs) < 200, leave=False):
        in_size, in_problem = _inspect(pair.input, mode)
        tg_size, tg_problem = _inspect(pair.target, mode)
        problems += [p for p in (in_problem, tg_problem) if p]
        if in_size is None or tg_size is None:  # no size exactly when there is a problem, recorded above
            continue
        if in_size != tg_size:
            problems.append(
                f"{pair.input} is {in_size[0]}x{in_size[1]} but its target {pair.target} is "
                f"{tg_size[0]}x{tg_size[1]} (width x height)"
            )
            continue
        in_sha, in_bytes = sha256_file(pair.input)
        tg_sha, tg_bytes = sha256_file(pair.target)
        infos.append(PairInfo(pair, in_size[0], in_size[1], in_sha, in_bytes, tg_sha, tg_bytes))
    return infos, problems


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (any of :data:`IMAGE_SUFFIXES`, case-insensitive).

    Args:
        folder: the folder.

    Returns:
        The files sorted by name, for a reproducible manifest and messages; pairing never relies on
        this order (readers pair by name or index).
    """
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
