"""Stochastic depth in training (docs/model.md): on in train mode, off in validation, replayable on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ast_model
from ast_model.nn.ast import drop_path_rates
from ast_model.nn.blocks import DropPath
from ast_model.train.distributed import rng_state, set_rng_state
from pipelines.stages.train import _model
from tests.tiny_pipeline import TINY_AST as TINY

SPEC_B = Path(__file__).resolve().parents[1] / "data" / "official_ast_state_dict_B.json"


def _rates(model: torch.nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, DropPath)]


def test_ast_b_rates_match_the_official_blocks() -> None:
    spec = json.loads(SPEC_B.read_text())
    blocks = spec["blocks_img_size_128"]
    order = [f"encoderlayer_{i}" for i in range(4)] + ["conv"] + [f"decoderlayer_{i}" for i in range(4)]
    want = [b["drop_path"] for s in order for b in blocks if b["name"].startswith(s + ".")]
    got = [r for stage in drop_path_rates((1, 2, 8, 8, 2, 8, 8, 2, 1), 0.1) for r in stage]
    assert got == pytest.approx(want, abs=1e-6)
    assert ast_model.model_config("ast_b").drop_path_rate == 0.1  # the rate training uses by default


def test_profile_override_reaches_the_model(tiny_ast: dict) -> None:
    params = {"model": {"name": "ast_t", "bottleneck_shift": False}}
    name, kwargs, pad = _model(params, "train", None, {**tiny_ast, "drop_path_rate": 0.3}, "params.yaml")
    model = ast_model.create_model(name, **kwargs)
    assert pad == model.pad_multiple == 64
    assert max(_rates(model)) == pytest.approx(0.3) and model.conv.blocks[0].drop_path.p == pytest.approx(0.3)


def test_active_in_training_off_in_validation_and_replayable() -> None:
    model = ast_model.create_model("ast_t", **TINY, drop_path_rate=0.5)
    x = torch.rand(4, 3, 64, 64)
    model.train()
    state = rng_state()
    a, b = model(x), model(x)
    assert not torch.equal(a, b)  # different per-sample masks on each pass
    set_rng_state(state)
    assert torch.equal(model(x), a)  # same RNG state, same masks: what exact resume relies on
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
