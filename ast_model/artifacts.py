"""What the stages hand each other, typed: the model folder, the training summary, the test metrics, and
the identity of a shard split. Every producer writes these classes and every consumer reads them; nothing
looks up a hand-off by string key.

    train    -> ModelDir(models/<experiment>/): final.pt, best.pt, config.json, summary.json (TrainingSummary),
                history.csv (ast_model.train.history)
    evaluate -> metrics/<experiment>.json (EvaluationMetrics)
    register -> reads both; the registry's record is pipelines.gate.RegistryRecord

A tracking run id travels as an opaque ``tracking_run_id`` string: the library does not know which tracker
made it (MLflow lives in ``pipelines``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ast_model.config import ConfigError
from ast_model.data.files import atomic_write_json

INDEX_FILE = "index.json"  # a shard split's index (written last by the shard writer: its presence = complete)


def index_sha256(split_dir: str | Path) -> str:
    """The identity of a shard split: the sha256 of its ``index.json`` (which lists every shard's sha256).

    Two splits with the same value hold the same samples; the champion gate compares scores only then.

    Raises:
        FileNotFoundError: the split has no index (not sharded yet).
    """
    path = Path(split_dir) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index (run the shard stage)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_json(path: Path, what: str, producer: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what} (run the {producer} stage first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: unreadable {what} (not a JSON object)")
    return data


def _build(cls: type, data: dict[str, Any], path: Path, what: str) -> Any:
    """``cls(**data)`` with unknown keys ignored (older files) and a clear message for a missing one."""
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise ConfigError(f"{path}: {what} written by an older version? ({exc})") from None


@dataclass(frozen=True)
class ModelDir:
    """The layout of ``models/<experiment>/``, the train stage's output (one place names its files).

    Attributes:
        root: the folder.
    """

    root: Path

    @classmethod
    def of(cls, models_root: str | Path, experiment: str) -> ModelDir:
        """``<models_root>/<experiment>``."""
        return cls(Path(models_root) / experiment)

    @property
    def final(self) -> Path:
        """The last step's weights (project checkpoint format)."""
        return self.root / "final.pt"

    @property
    def best(self) -> Path:
        """The best validation PSNR's weights (absent when the run had no validation)."""
        return self.root / "best.pt"

    @property
    def config(self) -> Path:
        """The resolved run (``RunSpec`` + DeepSpeed config)."""
        return self.root / "config.json"

    @property
    def summary(self) -> Path:
        """:class:`TrainingSummary`."""
        return self.root / "summary.json"

    @property
    def history(self) -> Path:
        """The learning curve, one row per validation (:mod:`ast_model.train.history`)."""
        return self.root / "history.csv"

    def weights(self, choice: Literal["best", "final"], summary: TrainingSummary | None = None) -> Path:
        """The checkpoint to score: ``best.pt`` or ``final.pt``.

        ``best`` falls back to ``final.pt`` when the training kept no best model (no validation split): the
        summary says so; without one (weights copied in by hand) the file itself decides.

        Raises:
            FileNotFoundError: no such checkpoint (names the folder and the stage that makes it).
        """
        path = self.final
        if choice == "best":
            has_best = summary.best_path is not None if summary is not None else self.best.is_file()
            path = self.best if has_best else self.final
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no trained weights (run the train stage, or check the experiment name)")
        return path


@dataclass(frozen=True)
class TrainingSummary:
    """``models/<experiment>/summary.json``: how a training run ended (written by rank 0 at the end).

    Attributes:
        experiment: the experiment name (the model folder's name).
        profile: the params section trained (``train``, ``train_spad``, ...).
        model: the network variant.
        world_size: processes that trained.
        steps: optimizer steps done.
        resumed_from_step: the step the last launch resumed from (None: ran from the start).
        final_val_psnr / final_val_ssim: the last validation's scores (None without validation).
        best_step / best_val_psnr: where the best validation PSNR was (None without validation).
        final_path / best_path: file names inside the model folder (``best_path`` None: no best model).
        tracking_run_id: the tracker's run (None without tracking).
        images: training images seen.
        tags: data version, git commit and profile, as the tracker recorded them.
    """

    experiment: str
    profile: str
    model: str
    world_size: int
    steps: int
    resumed_from_step: int | None = None
    final_val_psnr: float | None = None
    final_val_ssim: float | None = None
    best_step: int | None = None
    best_val_psnr: float | None = None
    final_path: str = "final.pt"
    best_path: str | None = None
    tracking_run_id: str | None = None
    images: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        atomic_write_json(Path(path), dataclasses.asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TrainingSummary:
        """Read one.

        Raises:
            FileNotFoundError: no summary. ConfigError: unreadable.
        """
        path = Path(path)
        return _build(cls, _read_json(path, "training summary", "train"), path, "training summary")

    @classmethod
    def load_optional(cls, path: str | Path) -> TrainingSummary | None:
        """Like :meth:`load`, None when the file does not exist (weights copied in by hand)."""
        return cls.load(path) if Path(path).is_file() else None


@dataclass(frozen=True)
class ImageScore:
    """One test image's scores (the restored image and the degraded input, each against the target)."""

    key: str
    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float


@dataclass(frozen=True)
class Scores:
    """The scores of a set of test pairs (:func:`ast_model.eval.evaluate.evaluate_pairs`).

    Attributes:
        psnr / ssim: means over the images of the restored output (a PSNR is ``inf`` for an exact output).
        input_psnr / input_ssim: the same for the degraded input: the baseline to beat.
        protocol: the metric protocol (:mod:`ast_model.eval.metrics`).
        y_channel: scored on BT.601 luma instead of RGB.
        crop_border: pixels ignored at every side.
        count: images scored.
        per_image: one :class:`ImageScore` per image, in input order.
    """

    psnr: float
    ssim: float
    input_psnr: float
    input_ssim: float
    protocol: str
    y_channel: bool
    crop_border: int
    count: int
    per_image: list[ImageScore]

    @property
    def gain_psnr(self) -> float:
        """Restored minus input PSNR (dB)."""
        return self.psnr - self.input_psnr

    @property
    def gain_ssim(self) -> float:
        """Restored minus input SSIM."""
        return self.ssim - self.input_ssim


@dataclass(frozen=True)
class EvaluationMetrics(Scores):
    """``metrics/<experiment>.json``: the test scores and exactly what was scored (the evaluate stage).

    Attributes (besides :class:`Scores`):
        experiment / dataset / task / split: what was scored (``task`` from the shard index).
        weights: the checkpoint's file name in the model folder; checkpoint_sha256: its hash (the register
            stage refuses weights that changed since).
        variant: the network variant.
        test_index_sha256: :func:`index_sha256` of the scored split.
        ensemble: the 8-way self-ensemble was used.
        training_steps: the training's optimizer steps (None: unknown).
        seconds / seconds_per_image: wall time of the scoring.
        tracking_run_id: the run the scores were logged to (None: not tracked).
    """

    experiment: str = ""
    dataset: str = ""
    task: str | None = None
    split: str = "test"
    weights: str = ""
    checkpoint_sha256: str = ""
    variant: str | None = None
    test_index_sha256: str = ""
    ensemble: bool = False
    training_steps: int | None = None
    seconds: float = 0.0
    seconds_per_image: float = 0.0
    tracking_run_id: str | None = None

    @staticmethod
    def path(metrics_root: str | Path, experiment: str) -> Path:
        """``<metrics_root>/<experiment>.json``."""
        return Path(metrics_root) / f"{experiment}.json"

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        atomic_write_json(Path(path), dataclasses.asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> EvaluationMetrics:
        """Read one.

        Raises:
            FileNotFoundError: no metrics. ConfigError: unreadable, or a field is missing.
        """
        path = Path(path)
        data = _read_json(path, "test metrics", "evaluate")
        data["per_image"] = [ImageScore(**row) for row in data.get("per_image") or []]
        return _build(cls, data, path, "test metrics")
