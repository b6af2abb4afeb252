"""Typed configs of the ``data``, ``prepare`` and ``shard`` sections of params.yaml.

Built by the project's one loader, :func:`ast_model.config.load_section`, so an unknown or mistyped key
is an error naming the key. Paths are not params: the stages take them as arguments, and dvc.yaml is the
one place that names them (in ``cmd``, ``deps`` and ``outs`` together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ast_model.data.degradations import DropRanges, HazeRanges, RainRanges

Source = Literal["embedded", "spad", "agan", "densehaze", "folders"]
Task = Literal["rain", "raindrop", "haze"]

# The task a real dataset serves when params do not say.
DEFAULT_TASKS: dict[str, str] = {"spad": "rain", "agan": "raindrop", "densehaze": "haze"}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset that ``prepare`` and ``shard`` build.

    Attributes:
        source: the reader (``embedded`` = generated from shipped photos).
        task: rain | raindrop | haze; real sources default to their paper task.
        root: the dataset folder on disk (real sources), absolute or relative to the repo root.
        splits: split name -> reader-specific subset (SPAD list file, AGAN folder, Dense-Haze number range
            ``"1-45"``, paired-folder sub-folder). Empty = the reader's defaults.
    """

    source: Source
    task: Task | None = None
    root: str = ""
    splits: dict[str, str] = field(default_factory=dict)


def _default_datasets() -> dict[str, DatasetSpec]:
    return {f"embedded_{t}": DatasetSpec(source="embedded", task=t) for t in ("rain", "raindrop", "haze")}


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: which datasets exist, and the largest run their shards must feed.

    Attributes:
        datasets: dataset name -> spec; the name is the folder under data/prepared and data/shards.
        max_nodes: nodes of the largest training configuration.
        max_procs_per_node: processes (ranks) per node of that configuration.
        max_workers: DataLoader workers per rank of that configuration.
    """

    datasets: dict[str, DatasetSpec] = field(default_factory=_default_datasets)
    max_nodes: int = 2
    max_procs_per_node: int = 2
    max_workers: int = 2

    def problems(self, section: str = "data") -> list[str]:
        """Cross-field checks the types cannot express (empty: fine), each naming its key."""
        problems = []
        for key in ("max_nodes", "max_procs_per_node", "max_workers"):
            if getattr(self, key) < 1:
                problems.append(f"{section}.{key} must be >= 1, got {getattr(self, key)}")
        if not self.datasets:
            problems.append(f"{section}.datasets is empty")
        for name, spec in self.datasets.items():
            key = f"{section}.datasets.{name}"
            if not name or "/" in name or name.startswith("."):
                problems.append(f"{key}: not a usable folder name")
            if spec.source in ("embedded", "folders") and spec.task is None:
                problems.append(f"{key}.task: required for source {spec.source}")
            if spec.source != "embedded" and not spec.root:
                problems.append(f"{key}.root: required for source {spec.source} (the folder on disk)")
            if spec.source == "embedded" and (spec.root or spec.splits):
                problems.append(f"{key}: root/splits do not apply to embedded (see prepare.embedded)")
        return problems

    @property
    def min_train_shards(self) -> int:
        """Every (node, process, worker) reads its own training shards: it needs at least one."""
        return self.max_nodes * self.max_procs_per_node * self.max_workers


@dataclass(frozen=True)
class EmbeddedConfig:
    """How the embedded default is generated (``prepare.embedded``).

    Attributes:
        seed: master seed; a pair's seed also mixes in task, photo and variant, so adding a photo never
            changes the other photos' pairs.
        short_side: output short side in pixels (crops are resized to it).
        max_aspect: crops are at most this wide relative to their height.
        crop_scale: crop height as a fraction of the photo height.
        photos: split -> photo names (see ``ast_model.data.embedded.list_photos()``); a photo may be in
            one split only.
        variants: split -> pairs generated per photo (each a different crop and degradation).
        rain, raindrop, haze: parameter ranges of the three degradation models.
    """

    seed: int = 0
    short_side: int = 192
    max_aspect: float = 1.5
    crop_scale: tuple[float, float] = (0.6, 1.0)
    photos: dict[str, list[str]] = field(
        default_factory=lambda: {
            "train": ["astronaut", "chelsea", "rocket", "china", "grace_hopper"],
            "val": ["flower"],
            "test": ["coffee", "motorcycle"],
        }
    )
    variants: dict[str, int] = field(default_factory=lambda: {"train": 12, "val": 3, "test": 3})
    rain: RainRanges = field(default_factory=RainRanges)
    raindrop: DropRanges = field(default_factory=DropRanges)
    haze: HazeRanges = field(default_factory=HazeRanges)


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` section.

    Attributes:
        check: ``full`` decodes every image of a real dataset (catches corrupt files); ``header`` reads
            sizes and modes only (much faster at SPAD's 640k pairs).
        embedded: generation settings of the embedded default.
    """

    check: Literal["full", "header"] = "full"
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)

    def problems(self, section: str = "prepare") -> list[str]:
        """The embedded default's checks (photo names, disjoint splits, variant counts), each naming its key."""
        from ast_model.data.embedded import embedded_problems  # the photo catalogue lives with the generator

        return embedded_problems(self.embedded, f"{section}.embedded")


@dataclass(frozen=True)
class ShardConfig:
    """The ``shard`` section.

    Attributes:
        samples_per_shard: upper bound of samples per tar; the ``train`` split additionally gets at least
            ``data.max_nodes * max_procs_per_node * max_workers`` shards.
        seed: seed of the shuffle that spreads training samples over shards (eval splits keep order).
    """

    samples_per_shard: int = 64
    seed: int = 0

    def problems(self, section: str = "shard") -> list[str]:
        """Value checks (empty: fine), each naming its key."""
        if self.samples_per_shard < 1:
            return [f"{section}.samples_per_shard must be >= 1, got {self.samples_per_shard}"]
        return []


def task_of(spec: DatasetSpec) -> str:
    """The task of a dataset, defaulting real sources to their paper task.

    Args:
        spec: the dataset spec.

    Returns:
        ``rain``, ``raindrop`` or ``haze``.
    """
    return spec.task or DEFAULT_TASKS[spec.source]
