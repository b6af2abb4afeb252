"""Input and target stay aligned pixel for pixel through the whole data path.

prepare -> shard -> train loader (decode, random crop, dihedral transform, batching): a pair whose
degradation is switched off must come out of the loader with identical input and target, in every
batch, with and without loader workers. A crop window or a flip applied to one side only, a
transposed channel order or an off-by-one in the crop would all break the equality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ast_model.data.loaders import make_train_loader
from pipelines.stages import prepare, shard


def _params(tmp_path: Path) -> Path:
    params = {
        "data": {
            "datasets": {"clean_rain": {"source": "embedded", "task": "rain"}},
            "max_nodes": 1,
            "max_procs_per_node": 1,
            "max_workers": 2,
        },
        "prepare": {
            "embedded": {
                "short_side": 40,
                "photos": {"train": ["astronaut", "brick"], "test": ["coffee"]},
                "variants": {"train": 3, "test": 1},
                # Opacity 0 and no heavy rain: the degradation is the identity, input == target.
                "rain": {"opacity": [0.0, 0.0], "heavy_prob": 0.0},
            }
        },
        "shard": {"samples_per_shard": 2},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("align")
    params = _params(tmp)
    prepare.run(params, tmp / "prepared")
    shard.run(params, tmp / "prepared", tmp / "shards")
    return tmp / "shards" / "clean_rain" / "train"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_degradation_free_pairs_leave_the_loader_identical(shards: Path, num_workers: int) -> None:
    loader = make_train_loader(
        shards, patch_size=24, batch_size=3, batches_per_epoch=6, num_workers=num_workers, seed=5
    )
    batches = list(loader)
    assert len(batches) == 6
    for x, y in batches:
        assert x.shape == y.shape == (3, 3, 24, 24)
        assert torch.equal(x, y)
    # The crops really vary (a loader that always returned the same window would pass trivially).
    firsts = {tuple(x[0, :, 0, 0].tolist()) for x, _ in batches}
    assert len(firsts) > 1


def test_degradation_is_really_off_in_the_prepared_pairs(shards: Path) -> None:
    """The premise of the test above: prepare wrote input == target (and they are not blank)."""
    from ast_model.data.loaders import make_eval_loader

    samples = list(make_eval_loader(shards))
    assert len(samples) == 6
    for s in samples:
        assert torch.equal(s["input"], s["target"])
        assert float(s["target"].std()) > 0.02


def test_a_real_degradation_differs_on_the_same_path(tmp_path: Path) -> None:
    """Control: with the rain switched on the same path yields different input and target."""
    params = yaml.safe_load(_params(tmp_path).read_text())
    del params["prepare"]["embedded"]["rain"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    prepare.run(path, tmp_path / "prepared")
    shard.run(path, tmp_path / "prepared", tmp_path / "shards")
    loader = make_train_loader(
        tmp_path / "shards" / "clean_rain" / "train",
        patch_size=24,
        batch_size=3,
        batches_per_epoch=2,
        num_workers=0,
        seed=5,
    )
    diffs = [float((x - y).abs().mean()) for x, y in loader]
    assert np.mean(diffs) > 0.01
