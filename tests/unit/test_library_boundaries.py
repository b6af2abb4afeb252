"""The library's boundaries: ``ast_model`` imports no orchestrator, has no process-wide side effects at import
or in its functions (those belong to command-line entry points), and ``import ast_model`` loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATORS = ("mlflow", "prefect", "dvc", "deepspeed.launcher")


def _library_files() -> list[Path]:
    return sorted((REPO / "ast_model").rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):  # function-level (lazy) imports included
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_library_imports_no_orchestrator_not_even_lazily() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(
            m for m in _imported_modules(p) if m.split(".")[0] in ("mlflow", "prefect", "dvc")
        )
        for p in _library_files()
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_import_ast_model_loads_no_torch_until_a_model_is_touched() -> None:
    code = (
        "import sys, ast_model, ast_model.config, ast_model.artifacts, ast_model.eval.metrics;"
        "assert 'torch' not in sys.modules, 'torch loaded at import';"
        "ast_model.list_models(); assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_no_process_wide_side_effects_outside_entry_points() -> None:
    """Logging setup, signal handlers and environment writes only in functions documented as entry-point
    helpers (called by CLIs, never by the library itself)."""
    allowed = {  # file -> functions that may do it (each says "entry points only" in its docstring)
        "ast_model/train/run.py": {"configure_logging", "stop_on_sigterm", "stop_with_parent"},
        "ast_model/train/distributed.py": {"ensure_launcher_env"},
        "ast_model/runtime.py": {"tune_malloc", "tune_allocator", "_mallopt", "set_threads"},
        "ast_model/cli.py": None,  # the command-line entry point itself
    }
    calls = ("basicConfig", "signal", "setdefault", "putenv", "update", "mallopt", "set_num_threads")
    found = []
    for path in _library_files():
        rel = str(path.relative_to(REPO))
        if rel.endswith(("bench.py", "bench_device.py")) or allowed.get(rel, set()) is None:
            continue  # benchmarks and the CLI are entry points
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            if fn.name in allowed.get(rel, set()):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                target = ast.unparse(node.func.value)
                if (
                    node.func.attr == "basicConfig"
                    or (target == "signal" and node.func.attr == "signal")
                    or (target == "os.environ" and node.func.attr in calls)
                    or node.func.attr in ("putenv", "mallopt", "set_num_threads")
                ):
                    found.append(f"{rel}:{node.lineno} {fn.name}: {ast.unparse(node.func)}")
            for node in ast.walk(fn):  # os.environ[...] = ...
                if isinstance(node, ast.Assign) and any(ast.unparse(t).startswith("os.environ[") for t in node.targets):
                    found.append(f"{rel}:{node.lineno} {fn.name}: os.environ[...] =")
    assert not found, found
