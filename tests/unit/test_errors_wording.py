"""Issue 13, findings 3 and 5: one error style, every config problem listed with its section and file, the
right count, a NaN hint that fits the run, no empty folders from a failed evaluate, outputs checked first."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ast_model import create_model, save_checkpoint
from ast_model.config import ConfigError, check_section, load_section
from ast_model.data.files import encode_png
from ast_model.data.shards import ShardSample, write_split
from pipelines.errors import PreflightError, format_error
from pipelines.stages import evaluate as evaluate_stage
from pipelines.stages import train as train_stage
from tests.shards import write_tiny_split as _split
from tests.tiny_pipeline import TINY_AST as TINY


@dataclass
class Inner:
    size: int = 1


@dataclass
class Section:
    name: str = "x"
    rate: float = 0.5
    inner: Inner = field(default_factory=Inner)
    sizes: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------ the config loader
def test_unknown_keys_and_type_errors_are_all_listed_not_just_the_first(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("sec: {nmae: y, rate: fast, inner: {size: big, colour: red}, sizes: [1, two, 3, four]}\n")
    with pytest.raises(ConfigError) as err:
        load_section(Section, p, "sec")
    problems = err.value.problems
    assert problems == [
        "unknown key(s) sec.nmae (known: inner, name, rate, sizes)",
        "sec.rate: expected a number, got 'fast'",
        "unknown key(s) sec.inner.colour (known: size)",
        "sec.inner.size: expected an integer, got 'big'",
        "sec.sizes[1]: expected an integer, got 'two'",
        "sec.sizes[3]: expected an integer, got 'four'",
    ]
    assert err.value.source == str(p)
    assert all(line.startswith(f"{p}: ") for line in str(err.value).splitlines())  # every line names the file


def test_check_section_keeps_going_with_defaults_so_value_checks_can_run(tmp_path: Path) -> None:
    cfg, problems = check_section(Section, {"sec": {"rate": "x", "name": "ok"}}, "sec")
    assert cfg == Section(name="ok") and problems == ["sec.rate: expected a number, got 'x'"]


# ------------------------------------------------------------------------------------ the train stage
@pytest.fixture
def shards(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("AST_CACHE_DIR", str(tmp_path / "cache"))
    _split(tmp_path / "shards" / "tiny" / "train", 4, 2)
    _split(tmp_path / "shards" / "tiny" / "val", 1, 1)
    return tmp_path / "shards"


def _train(tmp_path: Path, shards: Path, params: dict, *extra: str) -> int:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return train_stage.main(
        [
            "--params",
            str(path),
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / "models"),
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--no-mlflow",
            *extra,
        ]
    )


def test_a_profile_lists_type_and_value_problems_together_under_its_own_name(tmp_path, shards, capsys) -> None:
    params = {
        "model": {"name": "ast_t"},
        "train_p1": {
            "experiment": "p1",
            "dataset": "tiny",
            "model_overrides": TINY,
            "grad_clip": -1.0,
            "lr_initial": 1,
            "log_every": "often",
            "phases": [{"patch_size": 64, "batch_size": 3, "lr": 1e-3, "steps": 4}],
        },
    }
    assert _train(tmp_path, shards, params, "--profile", "train_p1", "--nproc-per-node", "2") == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    items = [line for line in lines if line.startswith("  - ")]
    assert (
        lines[0] == f"train: {len(items)} problems in {tmp_path / 'params.yaml'} (section train_p1), nothing started:"
    )
    assert len(items) == 4 and len(lines) == 5  # header count == listed items
    text = "\n".join(items)
    assert "unknown key(s) train_p1.lr_initial" in text
    assert "train_p1.log_every: expected an integer, got 'often'" in text
    assert "train_p1.grad_clip must be >= 0" in text
    assert "train_p1.phases[0].batch_size=3 does not divide into world size 2" in text
    assert "train." not in text  # nothing hard-codes the default profile
    assert "Traceback" not in err


def test_one_problem_is_one_line_with_the_file(tmp_path, shards, capsys) -> None:
    params = {
        "model": {"name": "ast_t"},
        "train": {
            "experiment": "p",
            "dataset": "tiny",
            "model_overrides": TINY,
            "grad_clip": -1.0,
            "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1e-3, "steps": 4}],
        },
    }
    assert _train(tmp_path, shards, params) == 2
    err = capsys.readouterr().err
    assert err == f"train: {tmp_path / 'params.yaml'}: train.grad_clip must be >= 0 (0 = off)\n"


def test_debug_shows_the_traceback_instead(tmp_path, shards) -> None:
    params = {
        "model": {"name": "ast_t"},
        "train": {
            "dataset": "tiny",
            "grad_clip": -1.0,
            "model_overrides": TINY,
            "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1, "steps": 1}],
        },
    }
    with pytest.raises(PreflightError, match="grad_clip"):
        _train(tmp_path, shards, params, "--debug")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_model_folder_stops_the_train_stage(tmp_path, shards, capsys) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models").chmod(0o555)
    params = {
        "model": {"name": "ast_t"},
        "train": {
            "dataset": "tiny",
            "model_overrides": TINY,
            "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1, "steps": 1}],
        },
    }
    try:
        assert _train(tmp_path, shards, params) == 2
    finally:
        (tmp_path / "models").chmod(0o755)
    assert "model folder (--out)" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()


def test_a_model_folder_that_is_a_file_stops_the_train_stage_before_anything_starts(tmp_path, shards, capsys) -> None:
    (tmp_path / "models").write_text("not a folder")  # works for root too: a file is never a folder
    params = {
        "model": {"name": "ast_t"},
        "train": {
            "experiment": "e",
            "dataset": "tiny",
            "model_overrides": TINY,
            "phases": [{"patch_size": 64, "batch_size": 2, "lr": 1, "steps": 1}],
        },
    }
    assert _train(tmp_path, shards, params) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model folder (--out)" in err and "is a file, not a folder" in err
    assert not (tmp_path / "ckpt").exists()


# ------------------------------------------------------------------------------------ the NaN hint
def _hint(precision: str, grad_clip: float = 0.0) -> str:
    from ast_model.train.loop import Trainer

    fake = SimpleNamespace(
        spec=SimpleNamespace(profile="train_p1"), cfg=SimpleNamespace(precision=precision, grad_clip=grad_clip)
    )
    return Trainer._non_finite_hint(fake)


def test_the_nan_hint_suggests_fp32_only_to_a_half_precision_run() -> None:
    assert "fp32" not in _hint("fp32")
    assert "train_p1.grad_clip" in _hint("fp32") and "train_p1.phases[].lr" in _hint("fp32")
    assert "use train_p1.precision: fp32 (now bf16)" in _hint("bf16")
    assert "lower train_p1.grad_clip (now 1)" in _hint("fp32", 1.0)


# ------------------------------------------------------------------------------------ evaluate
@pytest.fixture
def eval_repo(tmp_path: Path, monkeypatch) -> Path:
    """A test split whose shard matches its index but holds an undecodable image: scoring fails midway."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AST_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(
            {
                "train": {
                    "experiment": "tiny",
                    "dataset": "tinyset",
                    "phases": [{"patch_size": 16, "batch_size": 1, "lr": 1e-3, "steps": 1}],
                }
            }
        )
    )
    good = np.zeros((24, 32, 3), np.uint8)
    records = [
        ShardSample("a", encode_png(good), encode_png(good), {"width": 32, "height": 24}),
        ShardSample("b", b"\x89PNG\r\n\x1a\n not an image", encode_png(good), {"width": 32, "height": 24}),
    ]
    write_split(
        tmp_path / "data/shards/tinyset/test",
        records,
        lambda r: r,
        n_shards=1,
        info={"dataset": "tinyset", "task": "rain", "split": "test"},
    )
    (tmp_path / "models/tiny").mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(create_model("ast_t", **TINY), tmp_path / "models/tiny/final.pt")
    return tmp_path


def test_a_failed_evaluate_leaves_no_empty_reports_folder(eval_repo: Path, capsys) -> None:
    assert evaluate_stage.main(["--no-mlflow", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "b.input.png: cannot decode image" in err and "Traceback" not in err
    assert not (eval_repo / "reports").exists()
    assert not (eval_repo / "metrics").exists()


def test_evaluate_lists_its_problems_under_its_section(eval_repo: Path, capsys) -> None:
    params = yaml.safe_load((eval_repo / "params.yaml").read_text())
    params["evaluate_x"] = {"overlap": -1, "sample_grids": "two"}
    (eval_repo / "params.yaml").write_text(yaml.safe_dump(params))
    (eval_repo / "metrics").write_text("a file where the metrics folder goes")
    assert evaluate_stage.main(["--no-mlflow", "--quiet", "--section", "evaluate_x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: 3 problems in params.yaml (section evaluate_x), nothing written:")
    assert "evaluate_x.sample_grids: expected an integer" in err and "evaluate_x.overlap=-1 must be >= 0" in err
    assert "metrics folder (--metrics) metrics is a file, not a folder" in err


# ------------------------------------------------------------------------------------ ast-restore
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create_model("ast_t", **TINY), tmp_path_factory.mktemp("w") / "tiny.pt")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    return path


def _spy_reads(monkeypatch) -> list:
    import ast_model.cli as cli

    reads: list = []
    real = cli.read_image
    monkeypatch.setattr(cli, "read_image", lambda *a, **k: reads.append(a) or real(*a, **k))
    return reads


@pytest.mark.parametrize("case", ["file", "under_a_file"])
def test_ast_restore_checks_its_output_before_reading_any_image(
    case, checkpoint, photo, tmp_path, monkeypatch, capsys
) -> None:
    from ast_model.cli import main

    reads = _spy_reads(monkeypatch)
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if case == "file" else blocker / "out"
    assert main([str(photo), str(out), "--model", str(checkpoint), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ast-restore: output folder {out}")
    assert ("is a file, not a folder" if case == "file" else f"{blocker} is a file") in err
    assert ".tmp" not in err and reads == []  # no image was read, no temporary file is named


def test_ast_restore_checks_the_output_before_loading_the_model(photo, tmp_path, capsys) -> None:
    from ast_model.cli import main

    (tmp_path / "out").write_text("a file")
    assert main([str(photo), str(tmp_path / "out"), "--model", str(tmp_path / "missing.pt"), "--quiet"]) == 2
    assert "output folder" in capsys.readouterr().err  # not the model's error: the output came first


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_ast_restore_refuses_a_read_only_folder(checkpoint, photo, tmp_path, monkeypatch, capsys) -> None:
    from ast_model.cli import main

    reads = _spy_reads(monkeypatch)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main([str(photo), str(out), "--model", str(checkpoint), "--quiet"]) == 2
    finally:
        out.chmod(0o755)
    assert "is not writable" in capsys.readouterr().err and reads == []


def test_format_error_counts_what_it_lists() -> None:
    exc = PreflightError(["a", "b", "a", "c"], source="p.yaml", section="s")
    text = format_error("x", exc)
    assert text.splitlines()[0] == "x: 3 problems in p.yaml (section s), nothing started:"
    assert text.count("\n  - ") == 3
    assert json.dumps(text)  # plain text
