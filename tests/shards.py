"""Tiny shard splits for tests: random images whose target equals the input (shards, not learning, are tested)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ast_model.data.files import encode_png
from ast_model.data.shards import ShardSample, write_split


def write_tiny_split(folder: Path, n: int, n_shards: int, size: int = 64, info: dict | None = None) -> None:
    """Write ``n`` seeded ``size x size`` pairs as ``n_shards`` shards with an index into ``folder``
    (``info``: the index's dataset fields, e.g. ``{"task": "rain"}``)."""
    rng = np.random.default_rng(0)
    records = [
        ShardSample(
            f"s{i:03d}",
            encode_png(im := rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
            encode_png(im),
            {"width": size, "height": size},
        )
        for i in range(n)
    ]
    write_split(folder, records, lambda r: r, n_shards=n_shards, info=info or {})
