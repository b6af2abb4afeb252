"""Integration-test setup shared by the suite: DeepSpeed's compiled ops are built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def torch_extensions_dir() -> Path:
    """``TORCH_EXTENSIONS_DIR`` for every process the suite starts, with DeepSpeed's CPU comm op built.

    DeepSpeed JIT-compiles its shared-memory comm op (25-75 s on 2 cores) in every fresh process group
    unless it finds it in this cache; building it here once keeps each later launch at ~10-20 s.
    """
    path = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or REPO / ".cache" / "torch_extensions")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    # one ninja (the venv's, as DVC stages find it): another version's log forces a rebuild
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    code = (
        "from deepspeed.accelerator import get_accelerator\n"
        "b = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
        "b.load() if b is not None else None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600, capture_output=True)
    return path
