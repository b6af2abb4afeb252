"""WebDataset shards: writing a split, its ``index.json``, and verifying shards against the index.

Layout: ``<shard_dir> = data/shards/<dataset>/<split>/`` holding ``shard-000000.tar``, ... and
``index.json``. A sample is three tar members: ``<key>.input.png``, ``<key>.target.png``, ``<key>.json``.
The index records the sample count, bytes and sha256 of every shard, and the smallest image size (so a
loader can reject a too-large patch before training starts). A split folder is built under a hidden
staging name and renamed into place when complete: a folder with an ``index.json`` is always whole.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

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
    shards = []
    runs = np.array_split(np.arange(len(records)), n_shards)
    bar = tqdm(total=len(records), desc=desc, unit="pair", disable=len(records) < 500, leave=False)
    for number, run in enumerate(runs):
        name = SHARD_NAME.format(number)
        min_h = min_w = None
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


def verify_shards(shard_dir: str | Path, *, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Check shards against the index: presence, byte count and sha256.

    Args:
        shard_dir: the split folder.
        names: shard file names to check (default: all). A rank can check just the shards it reads.

    Returns:
        The index.

    Raises:
        ShardError: naming the first shard that is missing or differs from its index entry.
    """
    index = read_index(shard_dir)
    entries = {s["name"]: s for s in index["shards"]}
    for name in names if names is not None else list(entries):
        if name not in entries:
            raise ShardError(f"{shard_dir}: {name} is not listed in {INDEX}")
        entry, path = entries[name], Path(shard_dir) / name
        if not path.is_file():
            raise ShardError(f"{path}: shard missing (listed in {INDEX})")
        sha, size = sha256_file(path)
        if size != entry["bytes"] or sha != entry["sha256"]:
            raise ShardError(
                f"{path}: shard does not match {INDEX} (sha256 {sha[:12]}... vs {entry['sha256'][:12]}..., "
                f"{size} vs {entry['bytes']} bytes): corrupted or modified; rerun the shard stage"
            )
    return index
