"""WebDataset shards: writing a split, its ``index.json``, and verifying shards against the index.

Layout: ``<shard_dir> = data/shards/<dataset>/<split>/`` holding ``shard-000000.tar``, ... and
``index.json``. A sample is three tar members: ``<key>.input.png``, ``<key>.target.png``, ``<key>.json``.
The index records the sample count, bytes and sha256 of every shard, and the smallest image size (so a
loader can reject a too-large patch before training starts). A split folder is built under a hidden
staging name and renamed into place when complete: a folder with an ``index.json`` is always whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ast_model.data.files import atomic_write_json, sha256_file

INDEX = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
FORMAT = 1

T = TypeVar("T")


class ShardError(ValueError):
    """A shard folder that is incomplete, or a shard that does not match its index entry."""


@dataclass(frozen=True)
class ShardSample:
    """One sample as stored in a shard.

    Attributes:
        key: WebDataset key (no dots).
        input_png: PNG bytes of the degraded image.
        target_png: PNG bytes of the clean image.
        meta: JSON-able metadata (must hold ``width`` and ``height``).
    """

    key: str
    input_png: bytes
    target_png: bytes
    meta: dict[str, Any]


def shard_count(n_samples: int, samples_per_shard: int, min_shards: int = 1) -> int:
    """How many shards a split gets.

    Args:
        n_samples: samples in the split.
        samples_per_shard: upper bound per shard.
        min_shards: lower bound on the count (training: nodes x processes x workers).

    Returns:
        ``max(min_shards, ceil(n / samples_per_shard))``.

    Raises:
        ShardError: fewer samples than ``min_shards`` (some reader would get an empty shard and hang).
    """
    if samples_per_shard < 1:
        raise ShardError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if n_samples < min_shards:
        raise ShardError(
            f"{n_samples} samples cannot fill {min_shards} shards (data.max_nodes x max_procs_per_node x "
            "max_workers): every reader needs its own shard. Add samples or lower those params."
        )
    return max(min_shards, math.ceil(n_samples / samples_per_shard), 1)


def write_split(
    out_dir: str | Path,
    records: Sequence[T],
    load: Callable[[T], ShardSample],
    *,
    n_shards: int,
    info: dict[str, Any],
    desc: str = "shard",
) -> dict[str, Any]:
    """Write ``records`` into ``n_shards`` tar files plus ``index.json`` inside ``out_dir``.

    Samples are assigned to shards in contiguous, near-equal runs in the given order, so an exact pass
    over the shards in index order meets the samples in ``records`` order. The caller builds ``out_dir``
    as a staging folder and publishes it (see :mod:`ast_model.data.files`).

    Args:
        out_dir: an empty folder (created if missing).
        records: what to write, in order; loaded lazily one at a time (a real dataset never sits in memory).
        load: turns a record into a :class:`ShardSample`.
        n_shards: from :func:`shard_count`.
        info: extra index fields (dataset, split, task, source).
        desc: progress-bar label.

    Returns:
        The index that was written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    runs = np.array_split(np.arange(len(records)), n_shards)
    bar = tqdm(total=len(records), desc=desc, unit="pair", disable=len(records) < 500, leave=False)
    for number, run in enumerate(runs):
        name = SHARD_NAME.format(number)
        min_h: int | None = None
        min_w: int | None = None
        # mtime fixed: the same samples give byte-identical tars, so DVC sees no change on a rerun.
        with wds.TarWriter(str(out_dir / name), mtime=0.0) as sink:
            for i in run:
                sample = load(records[int(i)])
                meta = {**sample.meta, "key": sample.key}
                sink.write(
                    {
                        "__key__": sample.key,
                        "input.png": sample.input_png,
                        "target.png": sample.target_png,
                        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
                    }
                )
                min_h = meta["height"] if min_h is None else min(min_h, meta["height"])
                min_w = meta["width"] if min_w is None else min(min_w, meta["width"])
                bar.update()
        sha, size = sha256_file(out_dir / name)
        shards.append(
            {"name": name, "samples": len(run), "bytes": size, "sha256": sha, "min_height": min_h, "min_width": min_w}
        )
    bar.close()
    filled = [s for s in shards if s["samples"]]
    index = {
        **info,
        "format": FORMAT,
        "samples": len(records),
        "bytes": sum(s["bytes"] for s in shards),
        "min_height": min((s["min_height"] for s in filled), default=None),
        "min_width": min((s["min_width"] for s in filled), default=None),
        "shards": shards,
    }
    atomic_write_json(out_dir / INDEX, index)  # last: its presence marks the folder complete
    return index


def read_index(shard_dir: str | Path) -> dict[str, Any]:
    """Load a split's ``index.json``.

    Args:
        shard_dir: ``data/shards/<dataset>/<split>``.

    Returns:
        The index.

    Raises:
        ShardError: no index (not a shard folder, or an interrupted write), or an unreadable one.
    """
    path = Path(shard_dir) / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ShardError(f"{path}: missing; {shard_dir} is not a complete shard folder (run the shard stage)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: unreadable index ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("shards"), list):
        raise ShardError(f"{path}: not a format-{FORMAT} shard index (rerun the shard stage)")
    return index


def shard_paths(shard_dir: str | Path, index: dict[str, Any] | None = None) -> list[str]:
    """Paths of a split's shards, in index order.

    Args:
        shard_dir: the split folder.
        index: its index (read when not given).

    Returns:
        One path string per shard.
    """
    index = read_index(shard_dir) if index is None else index
    return [str(Path(shard_dir) / s["name"]) for s in index["shards"]]


# Verification cache: a shard's sha256 is computed once and remembered with the file's identity (size,
# mtime, ctime, inode); a later check with the same identity skips the hash. ctime cannot be set from user
# space, so even a corruption that restores the mtime is hashed again. The cache lives outside the shard
# folder (that folder is a DVC output: an extra file there would change its hash), one small JSON file per
# split, written atomically. A file modified within RACY_SECONDS of being hashed is not cached, because
# file-system timestamps are coarse (a few ms): a change in the same tick could keep the identity.
CACHE_ENV = "AST_CACHE_DIR"
RACY_SECONDS = 2.0


def cache_dir() -> Path:
    """Where verification results are cached: ``$AST_CACHE_DIR``, else ``$XDG_CACHE_HOME/ast-pipeline``,
    else ``~/.cache/ast-pipeline``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ast-pipeline"


def _cache_file(shard_dir: Path) -> Path:
    key = hashlib.sha256(str(shard_dir.resolve()).encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "verified-shards" / f"{key}.json"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or damaged: just hash again
        return {}
    shards = data.get("shards") if isinstance(data, dict) else None
    return shards if isinstance(shards, dict) else {}


def _write_cache(path: Path, shard_dir: Path, shards: dict[str, Any]) -> None:
    try:
        atomic_write_json(path, {"shard_dir": str(shard_dir.resolve()), "shards": shards})
    except OSError:  # a read-only home or cache folder only costs a rehash next time
        pass


def shard_problems(
    shard_dir: str | Path, *, names: Sequence[str] | None = None, use_cache: bool = True, progress: bool = False
) -> tuple[dict[str, Any] | None, list[str]]:
    """Check shards against their index: presence, byte count and sha256, collecting every problem.

    Args:
        shard_dir: the split folder.
        names: shard file names to check (default: all). A rank can check just the shards it reads.
        use_cache: skip the hash of a shard whose size, mtime, ctime and inode are those of an earlier
            successful check (see :func:`cache_dir`).
        progress: show a progress bar over the bytes hashed.

    Returns:
        ``(index or None, problems)``: one line per problem, each naming the shard (or the index) and
        the fix; an empty list when every shard matches.
    """
    shard_dir = Path(shard_dir)
    try:
        index = read_index(shard_dir)
    except ShardError as exc:
        return None, [str(exc)]
    entries = {s["name"]: s for s in index["shards"]}
    cache_path = _cache_file(shard_dir)
    cache = _read_cache(cache_path) if use_cache else {}
    problems: list[str] = []
    to_hash: list[tuple[str, Path, os.stat_result]] = []
    for name in names if names is not None else list(entries):
        if name not in entries:
            problems.append(f"{shard_dir}: {name} is not listed in {INDEX}")
            continue
        entry, path = entries[name], shard_dir / name
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{path}: shard missing (listed in {INDEX}); rerun the shard stage")
            continue
        if st.st_size != entry["bytes"]:  # no need to hash a file of the wrong size
            problems.append(
                f"{path}: shard does not match {INDEX} ({st.st_size} vs {entry['bytes']} bytes): "
                "truncated or modified; rerun the shard stage (or `dvc checkout` it)"
            )
            continue
        known = cache.get(name)
        if known and known.get("id") == _identity(st) and known.get("sha256") == entry["sha256"]:
            continue
        to_hash.append((name, path, st))
    changed = False
    bar = tqdm(
        total=sum(st.st_size for _, _, st in to_hash),
        unit="B",
        unit_scale=True,
        leave=False,
        desc=f"verify {shard_dir.name}",
        disable=not progress or not to_hash or not sys.stderr.isatty(),
    )
    for name, path, st in to_hash:
        sha, _ = sha256_file(path)
        bar.update(st.st_size)
        if sha != entries[name]["sha256"]:
            problems.append(
                f"{path}: shard does not match {INDEX} (sha256 {sha[:12]}... vs "
                f"{entries[name]['sha256'][:12]}...): corrupted or modified; rerun the shard stage "
                "(or `dvc checkout` it)"
            )
            cache.pop(name, None)
            changed = True
            continue
        after = path.stat()
        settled = time.time() - max(after.st_mtime_ns, after.st_ctime_ns) / 1e9 > RACY_SECONDS
        if use_cache and settled and _identity(after) == _identity(st):
            cache[name] = {"id": _identity(st), "sha256": sha}
            changed = True
    bar.close()
    if use_cache and changed:
        _write_cache(cache_path, shard_dir, cache)
    order = {name: i for i, name in enumerate(entries)}  # report in index order, whatever found it
    problems.sort(key=lambda line: next((order[n] for n in order if f"/{n}:" in line or f" {n} " in line), -1))
    return index, problems


def verify_shards(
    shard_dir: str | Path, *, names: Sequence[str] | None = None, use_cache: bool = True
) -> dict[str, Any]:
    """Check shards against the index: presence, byte count and sha256 (hashed once, see :func:`shard_problems`).

    Args:
        shard_dir: the split folder.
        names: shard file names to check (default: all). A rank can check just the shards it reads.
        use_cache: reuse earlier successful checks of unchanged files.

    Returns:
        The index.

    Raises:
        ShardError: naming every shard that is missing or differs from its index entry (one per line).
    """
    index, problems = shard_problems(shard_dir, names=names, use_cache=use_cache)
    if problems:
        raise ShardError("\n".join(problems))
    assert index is not None
    return index
