"""Shared test setup: deterministic seeds and few threads (the CI machine has 2 cores)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_ast() -> dict:
    """``create_model`` overrides of the tiny AST the fast tests build (a fresh copy per test)."""
    from tests.tiny_pipeline import TINY_AST

    return {**TINY_AST, "depths": list(TINY_AST["depths"])}


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped cleanly on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
