"""The bodies of the ``prepare`` and ``shard`` stages, one dataset at a time.

``pipelines/stages/{prepare,shard}.py`` call these (DVC runs those stages, and the Prefect flows run them
through DVC); they know nothing of either orchestrator. Every dataset folder is built in a hidden staging
folder and renamed into place when complete, so an interrupted run leaves the previous complete version or
nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from ast_model.config import ConfigError
from ast_model.data.config import DataConfig, DatasetSpec, EmbeddedConfig, ShardConfig, task_of
from ast_model.data.embedded import embedded_problems, generate_split
from ast_model.data.files import remove_stale_staging, staged_dir
from ast_model.data.manifest import read_manifest, read_pair_bytes, write_embedded_split, write_real_split
from ast_model.data.shards import ShardError, ShardSample, shard_count, write_split
from ast_model.data.sources import PairInfo, SourceError, read_split, splits_of

TRAIN_SPLIT = "train"


def check_real_dataset(
    name: str, spec: DatasetSpec, *, check: Literal["full", "header"]
) -> tuple[dict[str, list[PairInfo]], list[str]]:
    """Read and check every split of a real dataset, collecting problems instead of stopping at the first.

    Args:
        name: dataset name.
        spec: its spec (a real source).
        check: ``full`` or ``header`` image checks.

    Returns:
        ``(split -> checked pairs, problems)``: every problem of every broken split, one line each,
        prefixed with its dataset and split, in order.
    """
    found: dict[str, list[PairInfo]] = {}
    # SPAD and AGAN validate on their test set: check a subset once, and report its problems once.
    by_subset: dict[str, list[PairInfo] | None] = {}
    problems: list[str] = []
    for split, subset in splits_of(spec).items():
        if subset not in by_subset:
            try:
                by_subset[subset] = read_split(spec, split, subset, check=check, name=name)
            except SourceError as exc:
                by_subset[subset] = None
                problems.extend(f"{exc.where}: {p}" for p in exc.problems)  # flat: one line per problem
        infos = by_subset[subset]
        if infos is not None:
            found[split] = infos
    return found, problems


def prepare_real(name: str, spec: DatasetSpec, checked: dict[str, list[PairInfo]], out_root: Path) -> dict:
    """Publish the manifests of a checked real dataset under ``out_root/name``.

    Args:
        name: dataset name.
        spec: its spec.
        checked: from :func:`check_real_dataset` (no problems).
        out_root: ``data/prepared``.

    Returns:
        split -> number of pairs.
    """
    subsets = splits_of(spec)
    counts = {}
    with staged_dir(out_root / name) as staging:
        for split, infos in checked.items():
            header = {
                "dataset": name,
                "source": spec.source,
                "task": task_of(spec),
                "split": split,
                "subset": subsets[split],
            }
            write_real_split(staging / split, infos, root=spec.root, header=header)
            counts[split] = len(infos)
    return counts


def prepare_embedded(name: str, spec: DatasetSpec, cfg: EmbeddedConfig, out_root: Path) -> dict:
    """Generate one embedded dataset (all its splits) under ``out_root/name``.

    Args:
        name: dataset name.
        spec: its spec (source ``embedded``; ``task`` picks the degradation).
        cfg: the ``prepare.embedded`` section.
        out_root: ``data/prepared``.

    Returns:
        split -> number of pairs.
    """
    problems = embedded_problems(cfg)
    if problems:
        raise ConfigError(problems)
    task = task_of(spec)
    counts = {}
    with staged_dir(out_root / name) as staging:
        for split in cfg.photos:
            header = {"dataset": name, "source": "embedded", "task": task, "split": split, "subset": split}
            manifest = write_embedded_split(staging / split, generate_split(task, split, cfg), header=header)
            counts[split] = manifest["pairs"]
    return counts


@dataclass(frozen=True)
class SplitPlan:
    """What ``shard`` will write for one split: its manifest, the record order and the shard count."""

    split_dir: Path
    manifest: dict[str, Any]
    records: list[dict[str, Any]]
    n_shards: int


def plan_dataset(name: str, prepared: Path, data: DataConfig, cfg: ShardConfig) -> tuple[list[SplitPlan], list[str]]:
    """Plan the shards of every prepared split of one dataset, without writing.

    The ``train`` split is shuffled (seeded) so each shard mixes photos or scenes, and gets at least
    ``data.min_train_shards`` shards; other splits keep manifest order.

    Args:
        name: dataset name.
        prepared: ``data/prepared`` (holding ``name/<split>/manifest.json``).
        data: the ``data`` section.
        cfg: the ``shard`` section.

    Returns:
        ``(plans, problems)``: a problem per split that cannot be sharded (too few samples).

    Raises:
        ManifestError: an unreadable manifest.
        ShardError: no prepared split at all.
    """
    split_dirs = sorted(p for p in (prepared / name).glob("*") if (p / "manifest.json").is_file())
    if not split_dirs:
        raise ShardError(f"{prepared / name}: no prepared split (run the prepare stage)")
    plans, problems = [], []
    for split_dir in split_dirs:
        manifest = read_manifest(split_dir)
        records = list(manifest["samples"])
        minimum = data.min_train_shards if split_dir.name == TRAIN_SPLIT else 1
        try:
            n_shards = shard_count(len(records), cfg.samples_per_shard, minimum)
        except ShardError as exc:
            problems.append(f"dataset {name}, split {split_dir.name}: {exc}")
            continue
        if split_dir.name == TRAIN_SPLIT:
            random.Random(f"{cfg.seed}/{name}").shuffle(records)
        plans.append(SplitPlan(split_dir, manifest, records, n_shards))
    return plans, problems


def shard_dataset(name: str, plans: list[SplitPlan], out_root: Path) -> dict[str, dict[str, int]]:
    """Write the planned splits of one dataset into ``out_root/name/<split>/`` (published as a whole).

    Args:
        name: dataset name.
        plans: from :func:`plan_dataset`.
        out_root: ``data/shards``.

    Returns:
        split -> ``{"samples", "shards", "bytes"}``.

    Raises:
        ManifestError: a file changed since prepare (named); nothing of this dataset is published.
    """
    summary: dict[str, dict[str, int]] = {}
    with staged_dir(out_root / name) as staging:
        for plan in plans:
            split = plan.split_dir.name
            info = {k: plan.manifest[k] for k in ("dataset", "source", "task", "split")}
            load = partial(_load_sample, manifest=plan.manifest, split_dir=plan.split_dir, info=info)
            index = write_split(
                staging / split, plan.records, load, n_shards=plan.n_shards, info=info, desc=f"{name}/{split}"
            )
            summary[split] = {"samples": index["samples"], "shards": len(index["shards"]), "bytes": index["bytes"]}
    return summary


def _load_sample(record: dict, *, manifest: dict, split_dir: Path, info: dict) -> ShardSample:
    """A manifest record as a shard sample: verified PNG bytes plus the metadata its json carries."""
    inp, tgt = read_pair_bytes(manifest, split_dir, record)
    meta = {
        **info,
        "width": record["width"],
        "height": record["height"],
        "input_name": record["input"],
        "target_name": record["target"],
        **record["meta"],
    }
    return ShardSample(record["key"], inp, tgt, meta)


def clean_staging(*roots: Path) -> None:
    """Remove what interrupted runs left behind under ``roots`` (hidden staging folders).

    Args:
        roots: e.g. ``data/prepared`` and ``data/shards``.
    """
    for root in roots:
        remove_stale_staging(root)
