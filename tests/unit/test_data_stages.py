"""The prepare and shard stages end to end on a tiny params file (embedded + a real paired-folder dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ast_model.config import ConfigError
from ast_model.data.loaders import make_eval_loader, make_train_loader
from ast_model.data.manifest import ManifestError
from ast_model.data.shards import ShardError, verify_shards
from ast_model.data.sources import SourceError
from pipelines.stages import prepare, shard


def _real_dataset(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(n):
            img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            for kind, pixels in (("input", img), ("target", 255 - img)):
                (root / split / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / kind / f"img{i}.png")
    return root


def _params(tmp_path: Path, real_root: Path, **data: object) -> Path:
    params = {
        "data": {
            "datasets": {
                "tiny_rain": {"source": "embedded", "task": "rain"},
                "tiny_haze": {"source": "embedded", "task": "haze"},
                "real": {"source": "folders", "task": "rain", "root": str(real_root)},
            },
            "max_nodes": 1,
            "max_procs_per_node": 2,
            "max_workers": 1,
            **data,
        },
        "prepare": {
            "embedded": {
                "short_side": 24,
                "photos": {"train": ["astronaut", "chelsea"], "test": ["motorcycle"]},
                "variants": {"train": 2, "test": 1},
            }
        },
        "shard": {"samples_per_shard": 2},
        "train": {"owned": "by someone else: ignored by these stages"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_prepare_and_shard_build_the_documented_layout(tmp_path: Path) -> None:
    real = _real_dataset(tmp_path / "real")
    params = _params(tmp_path, real)
    prepared, shards = tmp_path / "prepared", tmp_path / "shards"
    summary = prepare.run(params, prepared)
    assert summary == {
        "tiny_rain": {"train": 4, "test": 1},
        "tiny_haze": {"train": 4, "test": 1},
        "real": {"train": 3, "test": 3},
    }
    manifest = json.loads((prepared / "tiny_haze/test/manifest.json").read_text())
    record = manifest["samples"][0]
    assert record["meta"]["degradation"]["depth"] == "disparity"
    assert (prepared / "tiny_haze/test" / record["input"]).is_file() and len(record["input_sha256"]) == 64
    real_manifest = json.loads((prepared / "real/train/manifest.json").read_text())
    assert real_manifest["root"] == str(real) and real_manifest["samples"][0]["input"] == "train/input/img0.png"
    assert not (prepared / "real/train/input").exists()  # real images are not copied

    result = shard.run(params, prepared, shards)
    assert result["tiny_rain"]["train"] == {"samples": 4, "shards": 2, "bytes": result["tiny_rain"]["train"]["bytes"]}
    assert result["real"]["test"]["shards"] == 2  # ceil(3 / samples_per_shard)
    for name in ("tiny_rain", "tiny_haze", "real"):
        for split in ("train", "test"):
            index = verify_shards(shards / name / split)
            assert [s["name"] for s in index["shards"]][0] == "shard-000000.tar"
    # Real pairs come out bit-exact, in name order, with their metadata.
    samples = list(make_eval_loader(shards / "real/test"))
    assert [s["key"] for s in samples] == ["img0", "img1", "img2"]
    original = np.asarray(Image.open(real / "test/input/img1.png"))
    assert np.array_equal((samples[1]["input"][0].permute(1, 2, 0) * 255).round().byte().numpy(), original)
    assert samples[1]["meta"]["input_name"] == "test/input/img1.png" and samples[1]["meta"]["task"] == "rain"
    embedded = next(iter(make_eval_loader(shards / "tiny_rain/test")))
    assert embedded["meta"]["degradation"]["model"] == "rain_streaks"
    batch = next(
        iter(
            make_train_loader(
                shards / "tiny_rain/train",
                patch_size=16,
                batch_size=2,
                batches_per_epoch=1,
                num_workers=0,
                seed=0,
                rank=0,
                world_size=2,
            )
        )
    )
    assert batch[0].shape == (2, 3, 16, 16)


def test_broken_real_dataset_writes_nothing_and_lists_every_problem(tmp_path: Path, capsys) -> None:
    real = _real_dataset(tmp_path / "real")
    (real / "train/target/img1.png").unlink()
    (real / "test/input/img2.png").write_bytes(b"broken")
    params = _params(tmp_path, real)
    with pytest.raises(SourceError) as err:
        prepare.run(params, tmp_path / "prepared")
    assert "img1.png: missing partner" in str(err.value) and "img2.png: unreadable" in str(err.value)
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())
    assert prepare.main(["--params", str(params), "--out", str(tmp_path / "prepared")]) == 2
    assert "prepare: 2 problems, nothing written:" in capsys.readouterr().err  # one flat, counted list


def test_too_few_train_samples_for_the_largest_run_fails_before_writing(tmp_path: Path) -> None:
    params = _params(tmp_path, _real_dataset(tmp_path / "real"), max_nodes=2, max_workers=2)  # 8 readers
    prepare.run(params, tmp_path / "prepared")
    with pytest.raises(ShardError) as err:
        shard.run(params, tmp_path / "prepared", tmp_path / "shards")
    for problem in (
        "dataset tiny_rain, split train: 4 samples cannot fill 8 shards",
        "dataset tiny_haze, split train: 4 samples",
        "dataset real, split train: 3 samples",
    ):
        assert problem in str(err.value)
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def test_a_real_file_changed_after_prepare_is_named(tmp_path: Path) -> None:
    real = _real_dataset(tmp_path / "real")
    params = _params(tmp_path, real)
    prepare.run(params, tmp_path / "prepared")
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(real / "test/target/img0.png")
    with pytest.raises(ManifestError, match=r"img0.png: changed since prepare"):
        shard.run(params, tmp_path / "prepared", tmp_path / "shards")


def test_unknown_params_key_is_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"datasetz": {}}}))
    with pytest.raises(ConfigError, match="data.datasetz"):
        prepare.run(params, tmp_path / "prepared")
    params.write_text(yaml.safe_dump({"data": {"datasets": {"x": {"source": "spad"}}}}))
    with pytest.raises(ConfigError, match="data.datasets.x.root: required"):
        prepare.run(params, tmp_path / "prepared")


def test_the_repository_params_load() -> None:
    from ast_model.config import load_section
    from ast_model.data.config import DataConfig, PrepareConfig, ShardConfig

    root = Path(__file__).resolve().parents[2]
    data = load_section(DataConfig, root / "params.yaml", "data")
    load_section(PrepareConfig, root / "params.yaml", "prepare")
    load_section(ShardConfig, root / "params.yaml", "shard")
    assert data.min_train_shards >= 1


def test_spad_shared_val_test_subset_is_checked_and_reported_once(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    (tmp_path / "spad").mkdir()
    spad = {"source": "spad", "root": str(tmp_path / "spad")}
    params.write_text(yaml.safe_dump({"data": {"datasets": {"spad": spad}}}))
    with pytest.raises(SourceError) as err:
        prepare.run(params, tmp_path / "prepared")
    message = str(err.value)
    assert message.count("real_test_1000.txt: list file not found") == 1
    assert message.count("real_world.txt: list file not found") == 1
