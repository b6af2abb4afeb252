"""The paper-table machinery on small inputs: spreads and verdicts, the writers, the table builders, the
``tables`` params section and the generated ablation profiles (pipelines/tables.py, pipelines/stages/)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from ast_model.config import read_params
from pipelines.errors import PreflightError
from pipelines.params import check_params
from pipelines.tables import (
    TABLES,
    Stat,
    Table,
    differences_sentence,
    load_tables_config,
    ordering,
    paper_tables,
    significant_differences,
    variants_of,
    verdict_sentence,
)

ROOT = Path(__file__).resolve().parents[2]


def test_stat_mean_spread_and_beyond() -> None:
    a, b = Stat.of([1.0, 3.0]), Stat.of([0.5, 0.9, None, math.nan])
    assert (a.mean, a.spread, a.n) == (2.0, 1.0, 2)
    assert b.values == (0.5, 0.9) and b.spread == pytest.approx(0.2)
    assert a.beyond(b) and not b.beyond(a)
    assert not Stat.of([1.0, 3.0]).beyond(Stat.of([0.5, 1.5]))  # ranges overlap
    assert not Stat.of([9.0]).beyond(Stat.of([0.0]))  # one seed: no spread, nothing is beyond it
    assert a.format() == "2.00 ± 1.00" and Stat.of([2.5]).format(1) == "2.5" and Stat.of([]).format() == "-"
    assert math.isnan(Stat.of([]).mean)


def test_ordering_verdicts() -> None:
    hi, mid, lo = Stat.of([3.0, 3.2]), Stat.of([2.0, 2.1]), Stat.of([1.0, 1.1])
    # the paper: A > B > C
    assert ordering([("A", 45.0, hi), ("B", 44.0, mid), ("C", 43.0, lo)])[0] == "reproduced"
    verdict, pairs = ordering([("A", 45.0, lo), ("B", 44.0, mid), ("C", 43.0, hi)])
    assert verdict == "not reproduced"
    assert {(p.higher, p.lower, p.status) for p in pairs} == {
        ("A", "B", "reversed"),
        ("A", "C", "reversed"),
        ("B", "C", "reversed"),
    }
    wide = Stat.of([0.0, 5.0])
    assert ordering([("A", 45.0, hi), ("B", 44.0, wide)])[0] == "undecided"
    # a reversal beyond the spread wins over agreements elsewhere
    assert ordering([("A", 45.0, hi), ("B", 44.0, lo), ("C", 43.0, mid)])[0] == "not reproduced"
    # rows the paper has no number for, and ties, are not compared
    assert ordering([("A", None, hi), ("B", 44.0, lo)]) == ("no comparison", [])
    assert ordering([("A", 44.0, hi), ("B", 44.0, lo)]) == ("no comparison", [])
    text = verdict_sentence(*ordering([("A", 45.0, lo), ("B", 44.0, hi)]))
    assert "**not reproduced**" in text and "Reversed: B > A." in text


def test_significant_differences() -> None:
    rows = [("A", Stat.of([1.0, 1.2])), ("B", Stat.of([2.0, 2.4])), ("C", Stat.of([1.1, 2.1]))]
    assert significant_differences(rows) == [("B", "A")]
    assert "B > A" in differences_sentence(significant_differences(rows))
    assert differences_sentence([]).startswith("No PSNR difference")


def test_table_writers(tmp_path) -> None:
    table = Table(
        "table7",
        "Activation",
        ["row", "PSNR | dB"],
        [["softmax", "1.00 ± 0.10"], ["ASSA", "2.00 ± 0.10"]],
        ["Caption one.", "Caption two."],
        [{"name": "softmax", "psnr": 1.0}, {"name": "ASSA", "psnr": 2.0, "extra": math.nan}],
    )
    md, csv_path = table.write(tmp_path)
    text = md.read_text()
    assert text.startswith("# Table 7: Activation\n")
    assert "| softmax | 1.00 ± 0.10 |" in text and "PSNR \\| dB" in text and text.rstrip().endswith("Caption two.")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert rows == [
        {"name": "softmax", "psnr": "1", "extra": ""},
        {"name": "ASSA", "psnr": "2", "extra": ""},
    ]
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        Table("table1", "t", ["a", "b"], [["x"]], [], []).markdown()


def _record(variant: str, psnrs: list[float], *, entropy: float | None = None, weights: bool = False) -> dict:
    runs = []
    for seed, p in enumerate(psnrs):
        run = {
            "seed": seed,
            "steps": 2,
            "psnr": p,
            "ssim": 0.5,
            "input_psnr": 20.0,
            "input_ssim": 0.4,
            "test_images": 2,
            "trained_params": 1000,
            "tracking_run_id": None,
            "entropy": None if entropy is None else {"value": entropy + seed * 0.01, "empty_fraction": 0.1},
            "branch_weights": [
                {
                    "layer": f"decoderlayer_0.blocks.{i}.attn",
                    "label": f"dec0.{i}",
                    "dense": 0.5 - i / 10 - seed / 100,
                    "sparse": 0.5 + i / 10 + seed / 100,
                }
                for i in range(4)
            ]
            if weights
            else None,
        }
        runs.append(run)
    return {
        "variant": variant,
        "overrides": {},
        "params": 6_645_347,
        "macs": 13_443_268_608,
        "budget": "short",
        "budget_description": "tiny",
        "dataset": "embedded_rain",
        "hardware": "CPU",
        "runs": runs,
    }


def test_ablation_tables_have_every_paper_row_and_a_verdict(tmp_path) -> None:
    from pipelines.stages.tables import build_ablation_table, build_figure4

    paper = paper_tables()
    # ASSA best by far, every other variant equal: "undecided" where the paper ranks two non-ASSA rows
    tables = ("table4", "table5", "table6", "table7", "table8", "table9")
    psnr = {v: [21.0, 21.1] for t in tables for v in variants_of(t)}
    psnr["assa"] = [23.0, 23.2]
    windowed = {v for v in psnr if v.startswith("window") or v == "assa"}
    records = {v: _record(v, p, entropy=2.0 if v in windowed else None) for v, p in psnr.items()}
    for t in tables:
        latency = ({v: 10.0 for v in variants_of(t)}, "timed") if t == "table9" else None
        table = build_ablation_table(t, paper, {v: records[v] for v in variants_of(t)}, latency)
        md, csv_path = table.write(tmp_path)
        names = [r["name"] for r in paper["tables"][t]["rows"]]
        assert [row[0] for row in table.rows] == names
        assert [r["name"] for r in csv.DictReader(csv_path.open())] == names
        text = md.read_text()
        for part in ("**Budget**", "**Hardware**", "mean ± spread", "ordering is **"):
            assert part in text, (t, part)
        if t == "table5":  # no ASSA row: every pair within the spread
            assert "ordering is **undecided**" in text
    t4 = build_ablation_table("table4", paper, {v: records[v] for v in variants_of("table4")})
    assert "ASSA > Swin SA" in " ".join(t4.caption)
    assert t4.rows[3][2] == "6.65" and t4.rows[3][4] == "13.44"  # computed counts as written
    fig, weights = build_figure4(paper, _record("assa", [23.0, 23.2], weights=True))
    assert [w.label for w in weights] == ["dec0.0", "dec0.1", "dec0.2", "dec0.3"]
    assert "reproduced: the deeper half" in " ".join(fig.caption)


def test_paper_file_covers_every_table_and_names_known_variants() -> None:
    paper = paper_tables()
    assert "CVPR 2024" in paper["citation"]
    assert set(paper["tables"]) == set(TABLES)
    variants = read_params(ROOT / "params.yaml")["tables"]["variants"]
    used = {v for t in TABLES for v in variants_of(t, paper)}
    assert used == set(variants), "every variant trained is used by a table, and every table row is trained"


def test_tables_section_is_checked() -> None:
    params = read_params(ROOT / "params.yaml")
    check_params(params)  # the whole-file check accepts the section (the table stages check it)
    cfg = load_tables_config(params)
    assert cfg.budget in cfg.budgets and len(cfg.seeds) >= 2
    bad = {**params, "tables": {**params["tables"], "budget": "huge", "seeds": [], "colour": 1}}
    with pytest.raises(PreflightError) as info:
        load_tables_config(bad, source="params.yaml")
    text = str(info.value)
    assert "tables.budget='huge' is not a key of tables.budgets" in text
    assert "tables.seeds is empty" in text and "colour" in text


def test_training_params_merge_the_budget_and_the_variant() -> None:
    from pipelines.stages.ablation import training_params

    params = read_params(ROOT / "params.yaml")
    cfg = load_tables_config(params)
    name, resolved = training_params(params, cfg, "frfn_b", 1)
    profile = resolved[name]
    assert name == "frfn_b-seed1" and profile["seed"] == 1 and profile["experiment"] == "ablation"
    assert profile["dataset"] == cfg.dataset and "launch" not in profile
    budget = cfg.active.train
    assert profile["model_overrides"] == {
        **params["train"].get("model_overrides", {}),
        **budget["model_overrides"],
        "frfn_ease": False,
    }
    assert profile["phases"] == budget["phases"]
    assert profile["loss"] == params["train"]["loss"]  # the rest of the base profile is kept


def _tiny_task(root: Path, task: str, tiny_ast: dict) -> None:
    """A tiny task model, its test split (2 random 192-px pairs) and the evaluate stage's record of it."""
    import torch

    from ast_model import create_model, save_checkpoint
    from ast_model.artifacts import EvaluationMetrics, index_sha256
    from ast_model.data.files import sha256_file
    from tests.shards import write_tiny_split

    split = root / "shards" / "tinyset" / "test"
    write_tiny_split(split, 2, 1, size=192, info={"task": task})
    torch.manual_seed(0)
    weights = save_checkpoint(create_model("ast_t", **tiny_ast), root / "models" / task / "final.pt")
    EvaluationMetrics(
        psnr=30.0,
        ssim=0.9,
        input_psnr=25.0,
        input_ssim=0.8,
        protocol="float",
        y_channel=False,
        crop_border=0,
        count=2,
        per_image=[],
        experiment=task,
        dataset="tinyset",
        task=task,
        split="test",
        weights="final.pt",
        variant="ast_t",
        checkpoint_sha256=sha256_file(weights)[0],
        test_index_sha256=index_sha256(split),
        training_steps=8,
    ).save(root / "metrics" / f"{task}.json")


def test_task_tables_and_niqe_table_from_a_tiny_task_model(tmp_path, tiny_ast) -> None:
    """Tables 1 and 10 end to end through the stage's run(): reported rows, measured rows, the "+" row."""
    from pipelines.stages import tables as stage

    _tiny_task(tmp_path, "rain", tiny_ast)
    kwargs = dict(
        models=tmp_path / "models", metrics=tmp_path / "metrics", shards=tmp_path / "shards", out=tmp_path / "out"
    )
    stage.run("table1", ROOT / "params.yaml", track=False, **kwargs)
    stage.run("table10", ROOT / "params.yaml", track=False, **kwargs)
    t1 = list(csv.DictReader((tmp_path / "out" / "table1.csv").open()))
    reported = [r["name"] for r in paper_tables()["tables"]["table1"]["rows"]]
    assert [r["name"] for r in t1] == [*reported, "degraded input", "AST-T (ours)", "AST-T+ (ours)"]
    ours, plus = t1[-2], t1[-1]
    assert (float(ours["psnr"]), ours["source"]) == (30.0, "measured")  # from the evaluate stage's record
    # the "+" row: the same weights scored with the 8-way self-ensemble, as evaluate_pairs computes it
    from ast_model.checkpoint import load_checkpoint
    from ast_model.eval.evaluate import evaluate_pairs
    from ast_model.eval.restore import RestoreOptions
    from pipelines.stages.evaluate import split_pairs

    model = load_checkpoint(tmp_path / "models" / "rain" / "final.pt")
    pairs = split_pairs(tmp_path / "shards" / "tinyset" / "test", None)
    expected = evaluate_pairs(model, pairs, options=RestoreOptions(ensemble=True))
    assert plus["source"] == "measured" and float(plus["psnr"]) == pytest.approx(expected.psnr, abs=1e-4)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "8-way geometric self-ensemble" in md and "not comparable" in md
    t10 = list(csv.DictReader((tmp_path / "out" / "table10.csv").open()))
    assert [r["name"] for r in t10][-2:] == ["input (ours)", "AST-T (ours)"]
    assert all(float(r["niqe"]) > 0 for r in t10)
    assert "no ground truth" in (tmp_path / "out" / "table10.md").read_text()

    with pytest.raises(PreflightError, match="no metrics of task 'haze'"):
        stage.run("table3", ROOT / "params.yaml", track=False, **kwargs)


def _table1(tmp_path: Path) -> None:
    """The table1 stage on the tiny task under ``tmp_path`` (models/, metrics/, shards/ -> out/)."""
    from pipelines.stages import tables as stage

    stage.run(
        "table1",
        ROOT / "params.yaml",
        track=False,
        models=tmp_path / "models",
        metrics=tmp_path / "metrics",
        shards=tmp_path / "shards",
        out=tmp_path / "out",
    )


def _flip_a_byte(shard: Path) -> None:
    """Corrupt a shard in place: same size, another sha256 (inside the first member's bytes)."""
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_a_task_table_refuses_a_record_of_another_test_split(tmp_path, tiny_ast) -> None:
    """The table stage depends on metrics/<task>.json, not the shards: it checks the record's split hash."""
    from pipelines.errors import PreflightError

    _tiny_task(tmp_path, "rain", tiny_ast)
    index = tmp_path / "shards" / "tinyset" / "test" / "index.json"
    index.write_text(index.read_text() + " ")  # re-sharded since the evaluate stage scored it
    with pytest.raises(PreflightError, match=r"rain\.json: scored a different test split .* evaluate@rain"):
        _table1(tmp_path)
    assert not (tmp_path / "out" / "table1.md").exists()


def test_a_task_table_verifies_the_test_shards_before_scoring(tmp_path, tiny_ast, monkeypatch) -> None:
    """Tables 1-3 score the task's test split again (self-ensemble): a corrupt shard is named first (by
    ``split_pairs``, which verifies the split before reading it; a user error: one line, exit 2)."""
    from ast_model.data.shards import ShardError

    monkeypatch.setenv("AST_CACHE_DIR", str(tmp_path / "cache"))
    _tiny_task(tmp_path, "rain", tiny_ast)
    bad = sorted((tmp_path / "shards" / "tinyset" / "test").glob("*.tar"))[0]
    _flip_a_byte(bad)
    with pytest.raises(ShardError, match=rf"{bad.name}: shard does not match index\.json"):
        _table1(tmp_path)
    assert not (tmp_path / "out" / "table1.md").exists()


def test_an_ablation_stage_verifies_the_test_split_before_it_trains(tmp_path, monkeypatch) -> None:
    """The test split is scored after each training: a corrupt test shard is named before any training."""
    from pipelines.errors import PreflightError
    from pipelines.stages import ablation
    from tests.shards import write_tiny_split

    shards = tmp_path / "shards" / "embedded_rain"
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        write_tiny_split(shards / split, n, 1)
    _flip_a_byte(shards / "test" / "shard-000000.tar")
    monkeypatch.setenv("AST_CACHE_DIR", str(tmp_path / "cache"))
    trained = []
    monkeypatch.setattr("pipelines.stages.train.run_worker", lambda *a, **k: trained.append(a) or 0)
    with pytest.raises(PreflightError, match=r"test/shard-000000\.tar: shard does not match index\.json"):
        ablation.run(
            ROOT / "params.yaml",
            "assa",
            shards=tmp_path / "shards",
            out=tmp_path / "out",
            work=tmp_path / "work",
            track=False,
        )
    assert trained == [] and not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
