"""Dataset readers on small fixture trees: pairing by list line / index / name, and broken datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ast_model.data.config import DatasetSpec
from ast_model.data.sources import SourceError, read_split, splits_of
from ast_model.data.sources.densehaze import parse_range


def _png(path: Path, value: int, size: tuple[int, int] = (16, 12), mode: str = "RGB") -> Path:
    """A flat image whose pixel value identifies it (so a test can tell which file a pair holds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(array, mode=mode).save(path)
    return path


def _ids(infos) -> list[tuple[int, int]]:
    """(input value, target value) of every pair."""
    return [
        (int(np.asarray(Image.open(i.ref.input))[0, 0, 0]), int(np.asarray(Image.open(i.ref.target))[0, 0, 0]))
        for i in infos
    ]


# ---------------------------------------------------------------------------------------------- SPAD
def test_spad_pairs_by_list_line_in_list_order(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"real_test_1000/rain/{i:03d}.png", 10 + i)
        _png(tmp_path / f"real_test_1000/gt/{i:03d}gt.png", 100 + i)
    # Leading "/" and "./" both mean "relative to the root"; the list order is kept (2, 0, 1).
    (tmp_path / "real_test_1000.txt").write_text(
        "/real_test_1000/rain/002.png /real_test_1000/gt/002gt.png\n"
        "./real_test_1000/rain/000.png ./real_test_1000/gt/000gt.png\n\n"
        "real_test_1000/rain/001.png real_test_1000/gt/001gt.png\n"
    )
    spec = DatasetSpec(source="spad", root=str(tmp_path))
    infos = read_split(spec, "test", "real_test_1000.txt")
    assert _ids(infos) == [(12, 102), (10, 100), (11, 101)]
    assert [i.ref.key for i in infos] == [f"real_test_1000_rain_{i:03d}" for i in (2, 0, 1)]
    assert (infos[0].width, infos[0].height) == (16, 12) and len(infos[0].input_sha256) == 64
    assert splits_of(spec)["test"] == "real_test_1000.txt"


def test_spad_reports_every_problem_at_once(tmp_path: Path) -> None:
    _png(tmp_path / "rain/0.png", 1)
    _png(tmp_path / "gt/0.png", 1)
    _png(tmp_path / "rain/1.png", 1)  # its gt is missing
    (tmp_path / "rain/2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    _png(tmp_path / "gt/2.png", 1)
    _png(tmp_path / "rain/3.png", 1, size=(16, 12))
    _png(tmp_path / "gt/3.png", 1, size=(12, 16))  # size mismatch
    _png(tmp_path / "rain/4.png", 1, mode="RGBA")  # odd channels
    _png(tmp_path / "gt/4.png", 1)
    lines = [f"/rain/{i}.png /gt/{i}.png" for i in range(5)] + ["only_one_field.png"]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    with pytest.raises(SourceError) as err:
        read_split(DatasetSpec(source="spad", root=str(tmp_path)), "train", "list.txt")
    message = str(err.value)
    assert len(err.value.problems) == 5, message
    assert "list.txt:2: missing target" in message and "gt/1.png" in message
    assert "list.txt:6: expected '<rain_path> <gt_path>'" in message
    assert "rain/2.png: unreadable image" in message
    assert "rain/3.png is 16x12 but its target" in message and "12x16" in message
    assert "rain/4.png: odd channels: mode RGBA" in message


def test_spad_missing_list_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="real_world.txt: list file not found"):
        read_split(DatasetSpec(source="spad", root=str(tmp_path)), "train", "real_world.txt")


# ----------------------------------------------------------------------------------------- AGAN-Data
def test_agan_pairs_by_index_not_by_sorted_listing(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        _png(tmp_path / f"test_a/data/{i}_rain.png", i)
        _png(tmp_path / f"test_a/gt/{i}_clean.png", 100 + i)
    _png(tmp_path / "test_a/data/3_rain.jpg", 3)  # a JPEG input, as some copies have
    _png(tmp_path / "test_a/gt/3_clean.png", 103)
    infos = read_split(DatasetSpec(source="agan", root=str(tmp_path)), "test", "test_a")
    assert [i.ref.key for i in infos] == ["test_a_1", "test_a_2", "test_a_3", "test_a_10"]
    ids = _ids(infos)
    assert [t - 100 for _, t in ids] == [1, 2, 3, 10]
    assert abs(ids[2][0] - 3) <= 2  # JPEG rounding


def test_agan_missing_partners_are_reported_not_shifted(tmp_path: Path) -> None:
    # Sorted-order pairing would silently pair 3_rain with 4_clean here.
    for i in (1, 3):
        _png(tmp_path / f"train/data/{i}_rain.png", i)
    for i in (1, 4):
        _png(tmp_path / f"train/gt/{i}_clean.png", i)
    with pytest.raises(SourceError) as err:
        read_split(DatasetSpec(source="agan", root=str(tmp_path)), "train", "train")
    assert len(err.value.problems) == 2
    assert "3_rain.png: missing partner" in str(err.value) and "4_clean.png: missing partner" in str(err.value)


def test_agan_redistributed_layout(tmp_path: Path) -> None:
    for i in (0, 5):
        _png(tmp_path / f"test_b/input/{i}.png", i)
        _png(tmp_path / f"test_b/target/{i}.png", 100 + i)
    infos = read_split(DatasetSpec(source="agan", root=str(tmp_path)), "test", "test_b")
    assert _ids(infos) == [(0, 100), (5, 105)]


# ---------------------------------------------------------------------------------------- Dense-Haze
def test_densehaze_pairs_by_number_and_splits_by_range(tmp_path: Path) -> None:
    for n in range(1, 7):
        _png(tmp_path / f"hazy/{n:02d}_hazy.png", n)
        _png(tmp_path / f"GT/{n:02d}_GT.png", 100 + n)
    spec = DatasetSpec(source="densehaze", root=str(tmp_path), splits={"train": "1-4", "test": "5-6"})
    assert splits_of(spec) == {"train": "1-4", "test": "5-6"}
    train = read_split(spec, "train", "1-4")
    test = read_split(spec, "test", "5-6")
    assert _ids(train) == [(n, 100 + n) for n in range(1, 5)]
    assert [i.ref.key for i in test] == ["densehaze_05", "densehaze_06"]


def test_densehaze_redistributed_layout_and_missing_gt(tmp_path: Path) -> None:
    for n in (51, 52):
        _png(tmp_path / f"valid_dense/input/{n}_hazy.png", n)
    _png(tmp_path / "valid_dense/gt/51_GT.png", 151)
    with pytest.raises(SourceError, match="52_hazy.png: missing partner 52_GT"):
        read_split(DatasetSpec(source="densehaze", root=str(tmp_path)), "test", "51-55")


def test_densehaze_default_split_and_range_parsing() -> None:
    assert splits_of(DatasetSpec(source="densehaze", root="x")) == {"train": "1-45", "val": "46-50", "test": "51-55"}
    assert parse_range("46-50") == range(46, 51) and parse_range("7") == range(7, 8)
    with pytest.raises(ValueError, match="number range"):
        parse_range("a-b")


# ------------------------------------------------------------------------------------ paired folders
def test_folders_pair_by_name_across_extensions(tmp_path: Path) -> None:
    _png(tmp_path / "val/input/b.png", 2)
    _png(tmp_path / "val/target/b.png", 102)
    _png(tmp_path / "val/input/a.jpg", 1)
    _png(tmp_path / "val/target/a.png", 101)
    spec = DatasetSpec(source="folders", task="rain", root=str(tmp_path))
    assert splits_of(spec) == {"val": "val"}  # only the sub-folders that exist
    infos = read_split(spec, "val", "val")
    assert [i.ref.key for i in infos] == ["a", "b"]
    assert [t for _, t in _ids(infos)] == [101, 102]


def test_folders_broken_dataset_lists_every_file(tmp_path: Path) -> None:
    _png(tmp_path / "input/ok.png", 1)
    _png(tmp_path / "target/ok.png", 1)
    _png(tmp_path / "input/lonely.png", 1)  # no target
    _png(tmp_path / "target/orphan.png", 1)  # no input
    (tmp_path / "input/corrupt.png").write_bytes(b"not a png at all")
    _png(tmp_path / "target/corrupt.png", 1)
    _png(tmp_path / "input/small.png", 1, size=(8, 8))
    _png(tmp_path / "target/small.png", 1, size=(16, 12))
    _png(tmp_path / "input/gray.png", 1, mode="L")
    _png(tmp_path / "target/gray.png", 1)
    with pytest.raises(SourceError) as err:
        read_split(DatasetSpec(source="folders", task="rain", root=str(tmp_path)), "test", ".")
    message = str(err.value)
    for fragment in (
        "lonely.png: missing partner",
        "orphan.png: missing partner",
        "input/corrupt.png: unreadable",
        "input/small.png is 8x8",
        "input/gray.png: odd channels: mode L",
    ):
        assert fragment in message, message
    assert message.startswith(f"dataset folders (folders at {tmp_path}), split test (.): 5 problem(s)")


def test_missing_root_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="dataset folder not found"):
        read_split(DatasetSpec(source="folders", task="rain", root=str(tmp_path / "nope")), "test", "test")


def test_header_check_skips_pixel_decoding(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # incompressible
    (tmp_path / "input").mkdir()
    Image.fromarray(noise).save(tmp_path / "input/a.png")
    _png(tmp_path / "target/a.png", 1, size=(24, 24))
    good = (tmp_path / "input/a.png").read_bytes()
    (tmp_path / "input/a.png").write_bytes(good[: len(good) // 2])  # truncated pixel data, header intact
    spec = DatasetSpec(source="folders", task="rain", root=str(tmp_path))
    assert len(read_split(spec, "test", ".", check="header")) == 1
    with pytest.raises(SourceError, match="unreadable"):
        read_split(spec, "test", ".", check="full")
