"""The learning curve of a training run: ``models/<experiment>/history.csv``, one row per validation.

Written by the training loop (rank 0, atomically, after every validation) and read by reports
(:mod:`pipelines.curves`) and by ``dvc plots`` (dvc.yaml ``plots:``). A plain CSV, so a person can open
it too. No torch import: reading a curve needs none.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from ast_model.data.files import atomic_write_bytes

# step: optimizer steps done; images: training images seen; train_seconds: training wall time so far;
# train_loss: mean loss since the previous row; val_* / input_*: the restored and the degraded validation
# images against their targets; gain_*: restored minus input.
HISTORY_FIELDS = (
    "step",
    "images",
    "train_seconds",
    "train_loss",
    "val_psnr",
    "val_ssim",
    "input_psnr",
    "input_ssim",
    "gain_psnr_db",
    "gain_ssim",
)
HISTORY_FILE = "history.csv"


def write_history(rows: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Write ``rows`` (keys :data:`HISTORY_FIELDS`) as CSV, atomically (temp file, then rename)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``history.csv`` as floats.

    Raises:
        FileNotFoundError: no such file (named, with what writes it).
        ValueError: a column of :data:`HISTORY_FIELDS` is missing (file and columns named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training history (every validation of a training run appends a row)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in HISTORY_FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        return [{k: float(row[k]) for k in HISTORY_FIELDS} for row in reader]
