"""dvc.yaml's code deps cannot drift from the imports: every repo module a stage's command can import (at
module level or inside a function, followed transitively) is covered by one of that stage's deps, so an
edit to any of them reruns the stage. A stage whose command runs no repo module is not checked."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ast_model", "pipelines")


def _module_file(name: str) -> Path | None:
    """``a.b.c`` -> ``a/b/c.py`` or ``a/b/c/__init__.py`` in the repo (None: not a repo module)."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _lazy_exports() -> dict[str, str]:
    """``ast_model``'s public names -> the module its ``__getattr__`` imports them from."""
    tree = ast.parse((REPO / "ast_model/__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _imports(path: Path) -> set[str]:
    """Repo modules ``path`` imports anywhere (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package.rsplit(".", 1)[0] if "." in package else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
            if base == "ast_model":  # `from ast_model import create_model`: imported lazily from its module
                lazy = _lazy_exports()
                found |= {lazy[alias.name] for alias in node.names if alias.name in lazy}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def closure(module: str) -> set[Path]:
    """Every repo file that running ``python -m module`` may import (packages' ``__init__`` included)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += sorted(_imports(path))
    return seen


def _stages() -> list[tuple[str, dict]]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return [(name, stage.get("do", stage)) for name, stage in spec.items()]


@pytest.mark.parametrize(("name", "stage"), _stages(), ids=[name for name, _ in _stages()])
def test_every_imported_repo_module_is_a_dep(name: str, stage: dict) -> None:
    match = re.search(r"python -m ([\w.]+)", stage["cmd"])
    if match is None:
        pytest.skip(f"{name} runs no repo module")
    deps = [REPO / d for d in stage.get("deps", []) if "${" not in d]
    # An empty package __init__ changes nothing; once it holds code it must be listed like any module.
    missing = sorted(
        str(f.relative_to(REPO))
        for f in closure(match.group(1))
        if f.stat().st_size and not any(f == d or d in f.parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {name!r} imports these without listing them in deps: {missing}"


def test_the_closure_sees_lazy_imports() -> None:
    """The checker must follow imports inside functions (the stages import lazily), or it proves nothing."""
    files = {str(p.relative_to(REPO)) for p in closure("pipelines.stages.evaluate")}
    assert {
        "pipelines/stages/evaluate.py",
        "ast_model/eval/evaluate.py",
        "ast_model/artifacts.py",
        "pipelines/tracking.py",
        "ast_model/__init__.py",
    } <= files


def test_dvc_yaml_parses_when_params_define_one_task(tmp_path: Path) -> None:
    """No stage names another task's keys (``${tasks.haze.dataset}``): with one task, DVC still reads every stage."""
    import subprocess
    import sys

    dvc = str(Path(sys.executable).parent / "dvc")  # the CLI: in-process DVC logs to pytest's closed streams
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tasks"] = {"rain": params["tasks"]["rain"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {"train@rain", "register@rain", "table1", "table2", "figure4"} <= names
    assert "train@haze" not in names
