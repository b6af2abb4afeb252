"""The ablation stages side by side, as `make run` (pipelines.side_by_side) and the Prefect flow
(pipelines.flows.run_table_stages) run them, with real DVC processes in a scratch DVC repo: several
`dvc --wait-for-lock repro --single-item` at once record every stage in one dvc.lock (`dvc status` clean
after), the stage after them runs last, and a failing stage stops the ones not yet started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.run import pipeline_env
from pipelines.side_by_side import LOG_DIR, group_stages, side_by_side, stale_stages

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _scratch_repo(root: Path, keys: list[str], fail: str | None = None) -> Path:
    """A DVC repo (no git): a foreach group `ablation` writing out/<key>.txt (`fail` exits with status 2), and
    `table1` joining them into table1.txt."""
    root.mkdir(exist_ok=True)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True, env=pipeline_env(root))
    (root / "params.yaml").write_text(
        yaml.safe_dump({"keys": {k: {"fail": "yes" if k == fail else "no"} for k in keys}})
    )
    script = (
        "import sys, time, pathlib; time.sleep(0.5); "
        "sys.exit(2) if sys.argv[2] == 'yes' else pathlib.Path('out', sys.argv[1] + '.txt').write_text(sys.argv[1])"
    )
    stage = {
        "foreach": "${keys}",
        "do": {
            "cmd": f'python -c "{script}" ${{key}} ${{item.fail}}',
            "params": ["keys.${key}"],
            "outs": ["out/${key}.txt"],
        },
    }
    join = (
        "import pathlib; pathlib.Path('table1.txt').write_text("
        "''.join(sorted(p.read_text() for p in pathlib.Path('out').glob('*.txt'))))"
    )
    table = {"cmd": f'python -c "{join}"', "deps": [f"out/{k}.txt" for k in keys], "outs": ["table1.txt"]}
    (root / "out").mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ablation": stage, "table1": table}}))
    return root


def _status(root: Path, *targets: str) -> dict:
    out = subprocess.run(
        [str(BIN / "dvc"), "status", "--json", *targets],
        cwd=root,
        env=pipeline_env(root),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout or "{}")


def test_stages_side_by_side_record_one_lock_and_leave_dvc_clean(tmp_path: Path, capsys) -> None:
    keys = ["a", "b", "c", "d", "e"]
    root = _scratch_repo(tmp_path, keys)
    stages = group_stages(root, "ablation")  # table1 is not in the group
    assert stages == [f"ablation@{k}" for k in keys]
    assert stale_stages(root, stages) == stages
    assert side_by_side(root, stages, workers=3, poll_s=0.1) == 0
    assert stale_stages(root, stages) == []  # a second make run starts none of them
    assert _status(root, "ablation") == {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(stages)
    assert all((root / "out" / f"{k}.txt").read_text() == k for k in keys)
    out = capsys.readouterr().out
    assert "5 ablation stages, 3 at a time" in out and "[5/5] " in out
    assert all((root / LOG_DIR / f"{s}.log").is_file() for s in stages)


def test_a_failing_stage_stops_the_rest_and_is_reported(tmp_path: Path, capsys) -> None:
    keys = ["a", "b", "c", "d", "e", "f"]
    root = _scratch_repo(tmp_path, keys, fail="a")
    status = side_by_side(root, group_stages(root, "ablation"), workers=2, poll_s=0.1)
    assert status != 0
    captured = capsys.readouterr()
    assert "ablation@a: FAILED" in captured.out
    assert "make run: ablation@a failed" in captured.err and "ablation@a.log" in captured.err
    started = [k for k in keys if (root / LOG_DIR / f"ablation@{k}.log").exists()]
    assert len(started) < len(keys)  # nothing new started after the failure


def test_the_flow_runs_the_ablation_stages_side_by_side_then_the_tables(tmp_path: Path, monkeypatch) -> None:
    from prefect import flow

    from pipelines.flows import run_table_stages

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))  # Prefect's temporary local API
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    @flow
    def tables(root: str, stages: list[str]) -> tuple[list[str], int]:
        done, failures = run_table_stages(root, stages)
        return done, len(failures)

    keys = ["a", "b", "c", "d"]
    ok = _scratch_repo(tmp_path / "ok", keys)
    stages = [*group_stages(ok, "ablation"), "table1"]
    done, failed = tables(str(ok), stages)
    assert failed == 0 and sorted(done) == sorted(stages) and done[-1] == "table1"
    assert (ok / "table1.txt").read_text() == "abcd" and _status(ok) == {}

    bad = _scratch_repo(tmp_path / "bad", keys, fail="a")
    done, failed = tables(str(bad), [*group_stages(bad, "ablation"), "table1"])
    assert failed == 1 and "table1" not in done and not (bad / "table1.txt").exists()
