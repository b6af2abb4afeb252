"""`dvc repro` of the paper-table stages at test size, in a temporary git copy of the project: every table file
is regenerated with every row, the runs land in MLflow as one parent per table with nested variant runs, and
`dvc plots show` draws Figure 4 and the per-variant PSNR. The ablation stages run side by side first, as
`make run` runs them.

The tiny profile (tests/tiny_pipeline.py) with three tasks on its one small dataset, and the ablation budget
cut to the tiny AST for 2 steps: every real stage runs (prepare, shard, train@, evaluate@, all 17 ablation@
variants with two seeds each, table1..table10, figure4), only smaller.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tiny_pipeline import BIN, TINY_AST, TINY_DATASET, TINY_OVERRIDES, project_repo

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ("rain", "raindrop", "haze")
TABLE_OVERRIDES = {
    **TINY_OVERRIDES,
    "tasks": {task: {"dataset": TINY_DATASET} for task in TASKS},
    "tables.budgets.short.train.model_overrides": TINY_AST,
    "tables.budgets.short.train.phases": [{"patch_size": 64, "batch_size": 4, "lr": 1.0e-3, "steps": 2}],
    "tables.latency": {"size": 64, "repeats": 1, "threads": 1},
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 840) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_dvc_repro_regenerates_every_table_with_every_row(tmp_path, torch_extensions_dir) -> None:
    from mlflow import MlflowClient

    from pipelines.params import write_overrides
    from pipelines.run import pipeline_env
    from pipelines.side_by_side import group_stages, side_by_side, side_by_side_workers
    from pipelines.tables import TABLES, paper_tables, variants_of

    work = project_repo(tmp_path / "repo")
    # The committed outputs of the embedded-default run are in the copy: remove them, so every file checked
    # below is one this repro wrote.
    shutil.rmtree(work / "reports" / "ablation")
    for path in (work / "reports").glob("*"):
        if path.is_file():
            path.unlink()
    write_overrides(work / "params.yaml", TABLE_OVERRIDES)
    env = {**pipeline_env(work), "PYTHONPATH": str(work)}
    dvc = str(BIN / "dvc")
    # As `make run` does: the ablation stages side by side (pipelines.side_by_side), then `dvc repro` of the tables,
    # which trains the three tasks and writes every table (the ablation stages are up to date by then).
    _run([dvc, "repro", "shard"], work, env)
    ablation = group_stages(work, "ablation")
    assert len(ablation) == 17
    assert side_by_side(work, ablation, side_by_side_workers(len(ablation))) == 0
    _run([dvc, "repro", *TABLES], work, env)

    paper = paper_tables()
    for table in TABLES:
        md = (work / "reports" / f"{table}.md").read_text()
        rows = list(csv.DictReader((work / "reports" / f"{table}.csv").open()))
        names = [r.get("name") for r in rows]
        expected = [r["name"] for r in paper["tables"][table]["rows"]]
        if table in ("table1", "table2", "table3"):
            expected += ["degraded input", "AST-T (ours)", "AST-T+ (ours)"]
        elif table == "table10":
            expected += ["input (ours)", "AST-T (ours)"]
        if table == "figure4":  # one row per ASSA layer of the tiny AST (bottleneck + 4 decoder levels)
            assert len(rows) == 5 and all(0 < float(r["sparse_mean"]) < 1 for r in rows)
            assert (work / "reports" / "figure4.png").read_bytes()[:4] == b"\x89PNG"
        else:
            assert names == expected, table
            for name in expected:
                assert f"| {name} |" in md, (table, name)
        assert "**Hardware**" in md, table
    t9 = list(csv.DictReader((work / "reports" / "table9.csv").open()))
    assert all(float(r["latency_ms"]) > 0 for r in t9)
    assert all(r["psnr_seed0"] and r["psnr_seed1"] for r in t9)  # two seeds per variant

    # Up to date afterwards: a second repro runs nothing.
    assert "changed" not in _run([dvc, "status", *TABLES], work, env)

    # MLflow: one parent run per table, the variants' runs nested under it.
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("paper-tables")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == set(TABLES)
    for table in ("table4", "table7", "table9"):
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[table].info.run_id]
        assert sorted(r.info.run_name for r in children) == sorted(variants_of(table, paper)), table
        assert all("psnr_mean" in r.data.metrics and r.data.tags["tables.training_runs"] for r in children)
    ablation = client.get_experiment_by_name("ablation")
    trained = client.search_runs([ablation.experiment_id], max_results=1000)
    assert len(trained) == 17 * 2 and all("test/psnr" in r.data.metrics for r in trained)

    # dvc plots: Figure 4 and the per-variant PSNR plots render.
    _run([dvc, "plots", "show", "-o", str(tmp_path / "plots")], work, env, timeout=300)
    assert (tmp_path / "plots" / "index.html").is_file()
