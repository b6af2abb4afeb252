"""The champion gate: which registered model version may hold the alias ``champion`` (pure logic).

A version's test result travels with it as ``test.*`` tags (:class:`Score`); :func:`decide` compares a new
version's score with the champion's, like for like (same dataset, split, metric protocol, Y/RGB, crop and
test images), and explains its decision in words that are stored on the version. No MLflow here:
:mod:`pipelines.model_registry` reads and writes the tags and the alias.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ast_model.artifacts import EvaluationMetrics
from ast_model.config import ConfigError

CHAMPION = "champion"  # the default alias of the best version: models:/<name>@champion


@dataclass(frozen=True)
class Score:
    """A model's test result and exactly what it was measured on.

    Attributes:
        psnr: mean PSNR in dB over the split.
        ssim: mean SSIM.
        dataset: dataset name (``data.datasets`` key, e.g. ``embedded_rain``).
        split: the split scored (``test``).
        protocol: metric protocol (``float``, ``matlab``, ``skimage``: :mod:`ast_model.eval.metrics`).
        y_channel: scored on BT.601 luma instead of RGB.
        crop_border: pixels ignored at every side.
        test_data: sha256 of the split's shard index ("" when unknown): which images were scored.
    """

    psnr: float
    ssim: float
    dataset: str
    split: str
    protocol: str
    y_channel: bool
    crop_border: int
    test_data: str = ""

    @classmethod
    def from_metrics(cls, metrics: EvaluationMetrics) -> Score:
        """From the evaluate stage's ``metrics/<experiment>.json``."""
        return cls(
            psnr=float(metrics.psnr),
            ssim=float(metrics.ssim),
            dataset=metrics.dataset,
            split=metrics.split,
            protocol=metrics.protocol,
            y_channel=bool(metrics.y_channel),
            crop_border=int(metrics.crop_border),
            test_data=metrics.test_index_sha256,
        )

    def to_tags(self) -> dict[str, str]:
        """The ``test.*`` tags of a model version (MLflow tags are strings)."""
        return {
            "test.psnr": repr(self.psnr),
            "test.ssim": repr(self.ssim),
            "test.dataset": self.dataset,
            "test.split": self.split,
            "test.protocol": self.protocol,
            "test.y_channel": str(self.y_channel).lower(),
            "test.crop_border": str(self.crop_border),
            "test.data": self.test_data,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Score | None:
        """Inverse of :meth:`to_tags`; None when the tags are missing or unreadable (a hand-made version)."""
        try:
            return cls(
                psnr=float(tags["test.psnr"]),
                ssim=float(tags["test.ssim"]),
                dataset=tags["test.dataset"],
                split=tags["test.split"],
                protocol=tags["test.protocol"],
                y_channel=tags["test.y_channel"] == "true",
                crop_border=int(tags["test.crop_border"]),
                test_data=tags.get("test.data", ""),
            )
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        """``"31.20 dB PSNR on embedded_rain/test (float, RGB)"``."""
        space = "Y" if self.y_channel else "RGB"
        crop = f", crop {self.crop_border}" if self.crop_border else ""
        return f"{self.psnr:.2f} dB PSNR on {self.dataset}/{self.split} ({self.protocol}, {space}{crop})"


@dataclass(frozen=True)
class GateDecision:
    """Whether a new version becomes champion, and why (the reason is stored on the version)."""

    promote: bool
    reason: str


def _mismatch(candidate: Score, champion: Score, same_test_data: bool) -> list[str]:
    """What makes two scores incomparable (empty: comparable)."""
    fields = ["dataset", "split", "protocol", "y_channel", "crop_border"]
    out = [
        f"{f} {getattr(champion, f)!r} vs {getattr(candidate, f)!r}"
        for f in fields
        if getattr(champion, f) != getattr(candidate, f)
    ]
    if same_test_data and candidate.test_data and champion.test_data and candidate.test_data != champion.test_data:
        out.append("the test images changed since the champion was scored (shard index sha256 differs)")
    return out


def decide(
    candidate: Score,
    champion: Score | None,
    *,
    champion_version: str | None = None,
    min_gain_db: float = 0.0,
    same_test_data: bool = True,
) -> GateDecision:
    """The champion gate: promote only a model whose test PSNR beats the champion's, like for like.

    Args:
        candidate: the new version's score.
        champion: the current champion's score; None if there is no champion, or if it has no score tags.
        champion_version: the champion's version number, None if there is no champion. A champion version
            without a readable score (``champion`` None) is never replaced automatically.
        min_gain_db: the PSNR must exceed the champion's by more than this (0: any gain; a tie never wins).
        same_test_data: also require the identical test images (the shard index hash), when both are known.

    Returns:
        The :class:`GateDecision`.
    """
    label = f"v{champion_version}" if champion_version else "the champion"
    if math.isnan(candidate.psnr) or candidate.psnr == -math.inf:  # a broken evaluation (+inf: exact output)
        return GateDecision(False, f"test PSNR is {candidate.psnr}: not a usable score")
    if champion is None and champion_version is None:
        return GateDecision(True, f"first champion: {candidate.describe()}")
    if champion is None:
        return GateDecision(
            False,
            f"{label} has no readable test.* score tags (registered by hand?): "
            "not replaced automatically; move the alias by hand if intended",
        )
    mismatch = _mismatch(candidate, champion, same_test_data)
    if mismatch:
        return GateDecision(False, f"not comparable with {label} ({'; '.join(mismatch)}): champion kept")
    gain = candidate.psnr - champion.psnr
    if gain > min_gain_db:
        return GateDecision(
            True,
            f"{candidate.psnr:.4f} dB beats {label}'s {champion.psnr:.4f} dB "
            f"by {gain:.4f} dB ({candidate.protocol}, {candidate.dataset}/{candidate.split})",
        )
    needed = f" by more than {min_gain_db:g} dB" if min_gain_db > 0 else ""
    return GateDecision(
        False,
        f"{candidate.psnr:.4f} dB does not beat {label}'s {champion.psnr:.4f} dB{needed} "
        f"({candidate.protocol}, {candidate.dataset}/{candidate.split})",
    )


def registered_model_name(template: str, task: str) -> str:
    """The registered model's name, e.g. ``"{task}-ast"`` -> ``"rain-ast"``.

    Raises:
        ConfigError: the template names another field, or the result is not a usable model name.
    """
    try:
        name = template.format(task=task)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"register.model_name {template!r}: only {{task}} can be filled in ({exc})") from None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"register.model_name {template!r} gives {name!r}: use letters, digits, '.', '_', '-'")
    return name


@dataclass(frozen=True)
class RegisterConfig:
    """The ``register`` section.

    Attributes:
        model_name: registered model name; ``{task}`` is the dataset's task (rain, raindrop, haze).
        alias: the alias that marks the best model (``models:/<name>@<alias>``).
        min_gain_db: a new version must beat the champion's test PSNR by more than this (0: any gain;
            a tie never replaces the champion).
        same_test_data: compare only scores measured on the identical test images (same shard index
            hash); a changed test set then keeps the champion until it is re-evaluated or moved by hand.
    """

    model_name: str = "{task}-ast"
    alias: str = CHAMPION
    min_gain_db: float = 0.0
    same_test_data: bool = True

    def problems(self, section: str = "register") -> list[str]:
        """Cross-field problems (empty: fine), each naming its key under ``section``."""
        out = []
        if self.min_gain_db < 0:
            out.append(f"{section}.min_gain_db={self.min_gain_db} must be >= 0")
        if not self.alias or not self.alias.replace("-", "").replace("_", "").isalnum():
            out.append(f"{section}.alias={self.alias!r}: use letters, digits, '-' and '_'")
        return out


@dataclass(frozen=True)
class RegistryRecord:
    """``reports/<experiment>/registry.json``: what the register stage did (read by ``make run``'s summary).

    Attributes:
        registered_model: the registered model's name (``rain-ast``).
        version: the new version.
        model_uri: ``models:/<name>/<version>``.
        alias: the champion alias.
        promoted: the new version took the alias.
        reason: the gate's explanation.
        champion_version: the version holding the alias now.
        previous_champion: ``{"version", "psnr"}`` of the champion before, or None.
        test: the version's :class:`Score`, as a mapping.
        logged_model_id: MLflow's logged model id.
        tracking_run_id: the run the model was logged to.
    """

    registered_model: str
    version: str
    model_uri: str
    alias: str
    promoted: bool
    reason: str
    champion_version: str | None
    previous_champion: dict[str, Any] | None
    test: dict[str, Any]
    logged_model_id: str
    tracking_run_id: str

    @staticmethod
    def path(reports_root: str | Path, experiment: str) -> Path:
        """``<reports_root>/<experiment>/registry.json``."""
        return Path(reports_root) / experiment / "registry.json"

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        from ast_model.data.files import atomic_write_json

        atomic_write_json(Path(path), asdict(self))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RegistryRecord:
        """Read one.

        Raises:
            FileNotFoundError: none yet. ConfigError: unreadable or from an older version.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: data[f.name] for f in fields(cls)})
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no registry record (run the register stage)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable registry record ({exc})") from exc
