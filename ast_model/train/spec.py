"""A fully resolved training run: what the launcher hands to every worker, as one JSON file.

The training phase validates params, resolves phases for the world size and paths, and writes a
:class:`RunSpec`; the workers read it back, so every rank trains exactly what was validated. Its
:meth:`RunSpec.fingerprint` decides whether existing checkpoints belong to this run (resume) or to an
older configuration (start fresh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ast_model.config import from_dict
from ast_model.data.files import atomic_write_json
from ast_model.train.config import ResolvedPhase, TrainConfig

# Keys that change how a run is watched or launched, not what it computes: they may differ on resume.
# (The world size, which changes the data split, is fingerprinted on its own.)
_COSMETIC = ("log_every", "keep_checkpoints")
_COSMETIC_VALIDATION = ("sample_images",)


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs.

    Attributes:
        train: the training profile.
        profile: the params section it came from (``train``, ``train_spad``, ...).
        model_name: registered variant.
        model_kwargs: overrides passed to ``create_model`` (the ``model`` section + the profile's).
        phases: phases resolved for ``world_size``.
        world_size: total processes.
        train_dir: training shard folder (absolute).
        val_dir: validation shard folder (absolute), or None.
        out_dir: final outputs, ``models/<experiment>`` (absolute).
        ckpt_dir: DeepSpeed checkpoints, ``checkpoints/<experiment>`` (absolute).
        tags: data version and git commit, for the tracker.
        backend: process-group backend (``auto``: nccl with CUDA, else gloo), from the launch settings.
        timeout_s: timeout of every collective (a stuck peer fails the run instead of hanging it).
    """

    train: TrainConfig
    profile: str
    model_name: str
    model_kwargs: dict[str, Any]
    phases: list[ResolvedPhase]
    world_size: int
    train_dir: str
    val_dir: str | None
    out_dir: str
    ckpt_dir: str
    tags: dict[str, str] = field(default_factory=dict)
    backend: str = "auto"
    timeout_s: int = 600

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all phases."""
        return sum(s.steps for s in self.phases)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (inverse of :meth:`from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train"] = self.train.to_dict()
        d["phases"] = [dataclasses.asdict(s) for s in self.phases]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Rebuild from :meth:`to_dict` (the train section is re-checked strictly)."""
        d = dict(d)
        d["train"] = from_dict(TrainConfig, d["train"], prefix="train")
        d["phases"] = [ResolvedPhase(**s) for s in d["phases"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (atomic)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read a spec written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def identity(self) -> dict[str, Any]:
        """The part of the spec that determines the trained weights."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in _COSMETIC}
        train["validation"] = {k: v for k, v in train["validation"].items() if k not in _COSMETIC_VALIDATION}
        return {  # backend and timeout_s change how the run is launched, not what it computes
            "train": train,
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            "phases": [dataclasses.asdict(s) for s in self.phases],
            "world_size": self.world_size,
            "data": self.tags.get("data.train_index_sha256"),
        }

    def fingerprint(self) -> str:
        """sha256 of :meth:`identity`: equal fingerprints may resume each other's checkpoints."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (for "config changed" messages)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, dotted = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(changed_keys(a, b, dotted + "."))
        elif a != b:
            out.append(dotted)
    return out
