"""The ``evaluate`` section of params.yaml as a typed, strict dataclass.

Read with the project's one loader (:func:`ast_model.config.load_section`): an unknown or mistyped key is
an error naming it. Which model and which dataset are not repeated here: the evaluate stage scores
``models/<train.experiment>/`` on ``data/shards/<train.dataset>/<split>/`` (the training profile's keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ast_model.eval.metrics import PROTOCOLS, Protocol
from ast_model.eval.restore import Precision, RestoreOptions


@dataclass(frozen=True)
class EvaluateConfig:
    """How the trained model is scored.

    Attributes:
        split: the shard split scored (``test``).
        weights: ``best`` (best validation PSNR during training; ``final.pt`` when the run had no
            validation) or ``final`` (the last step).
        protocol: metric protocol, see :mod:`ast_model.eval.metrics`: ``float`` (BasicSR style), ``matlab``
            (rounded Y; the SPAD numbers) or ``skimage`` (the official AGAN-Data / Dense-Haze scripts).
        y_channel: PSNR / SSIM on BT.601 luma (SPAD) instead of RGB (AGAN-Data, Dense-Haze).
        crop_border: pixels ignored at every side (0 for all three AST tasks).
        tile: ``auto`` (whole images when they fit in memory, else tiles), ``null`` / 0 (always whole) or
            a tile side in pixels.
        overlap: pixels shared by neighbouring tiles.
        blend: how overlapping tiles merge: ``cosine`` (seamless) or ``mean`` (the official AGAN-Data and
            Dense-Haze test scripts: 384 / 80 and 1152 / 384 px tiles / overlaps).
        ensemble: the 8-way geometric self-ensemble (the paper's "+" rows; 8x slower).
        precision: ``fp32``; ``bf16`` / ``fp16`` autocast on CUDA only.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        max_images: score only the first N images of the split (null: all).
        sample_grids: how many ``input | restored | target`` PNGs to write (the first N images).
    """

    split: str = "test"
    weights: Literal["best", "final"] = "best"
    protocol: Protocol = "float"
    y_channel: bool = False
    crop_border: int = 0
    tile: int | Literal["auto"] | None = "auto"
    overlap: int = 64
    blend: Literal["cosine", "mean"] = "cosine"
    ensemble: bool = False
    precision: Precision = "fp32"
    device: str = "auto"
    max_images: int | None = None
    sample_grids: int = 4

    def problems(self, section: str = "evaluate") -> list[str]:
        """Cross-field problems the types cannot express (empty: fine), each naming its key under
        ``section`` (``evaluate``, ``evaluate_spad``, ...)."""
        out = []
        if self.protocol not in PROTOCOLS:  # the Literal already checks; kept for hand-built configs
            out.append(f"{section}.protocol={self.protocol!r} is not one of {list(PROTOCOLS)}")
        if self.crop_border < 0:
            out.append(f"{section}.crop_border={self.crop_border} must be >= 0")
        if isinstance(self.tile, int) and self.tile < 0:
            out.append(f"{section}.tile={self.tile} must be 'auto', null or >= 0")
        if self.overlap < 0:
            out.append(f"{section}.overlap={self.overlap} must be >= 0")
        elif isinstance(self.tile, int) and self.tile > 0 and self.overlap >= self.tile:
            out.append(f"{section}.overlap={self.overlap} must be smaller than {section}.tile={self.tile}")
        if self.max_images is not None and self.max_images < 1:
            out.append(f"{section}.max_images={self.max_images} must be >= 1 (null: all images)")
        if self.sample_grids < 0:
            out.append(f"{section}.sample_grids={self.sample_grids} must be >= 0")
        if not self.split or "/" in self.split:
            out.append(f"{section}.split={self.split!r} is not a split folder name")
        return out

    def restore_options(self) -> RestoreOptions:
        """The :class:`~ast_model.eval.restore.RestoreOptions` for these settings."""
        return RestoreOptions(
            tile=self.tile or None,
            overlap=self.overlap,
            blend=self.blend,
            ensemble=self.ensemble,
            precision=self.precision,
        )
