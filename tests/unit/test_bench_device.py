"""The device benchmark (``python -m ast_model.bench --device ...``): its CPU smoke run and its imports."""

from __future__ import annotations

import subprocess
import sys

from ast_model.bench_device import run


def test_smoke_matrix_on_cpu_runs_every_row_of_the_gpu_code() -> None:
    lines: list[str] = []
    results = run(
        device="cpu",
        models=["ast_t"],
        precisions=["fp32", "bf16", "autocast_bf16"],
        modes=["eager"],
        smoke=True,
        warmup=1,
        repeats=1,
        print_fn=lines.append,
    )
    cases = {(case, precision, impl) for (_, case, precision, _, impl) in results}
    assert len(cases) == 3 * 3 * 2  # (two inference sizes + a train step) x precisions x impls
    for key, r in results.items():
        assert not r.note, (key, r.note)
        assert r.ms > 0 and r.images_per_s > 0 and r.peak_gib is None  # no per-case peak on CPU
        assert (r.tflops is not None and r.tflops > 0) == key[1].startswith("train")
    assert any("fp32 max |fast - reference|" in ln for ln in lines)
    assert sum("ref/fast" in ln or "x |" in ln or ln.rstrip().endswith("x") for ln in lines) >= 9


def test_budget_skips_cases_instead_of_overrunning() -> None:
    lines: list[str] = []
    results = run(
        device="cpu",
        models=["ast_t"],
        precisions=["fp32"],
        modes=["eager"],
        smoke=True,
        warmup=1,
        repeats=1,
        budget_s=0.0,
        print_fn=lines.append,
    )
    assert results and all(r.note == "skipped (budget)" for r in results.values())


def test_importable_with_torch_alone() -> None:
    """The GPU machine has torch but no DeepSpeed or MLflow: the benchmark must not import them."""
    code = (
        "import sys, ast_model.bench, ast_model.bench_device; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'deepspeed', 'mlflow', 'prefect', 'dvc'}); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
