"""Training precisions and the compile switch in params (issue 10, items 2 and 3): config level.

The train stage itself runs every CPU precision in ``tests/integration/test_train_stage_precisions.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ast_model.config import ConfigError, load_section, read_params
from ast_model.train.config import PRECISIONS, PhaseConfig, TrainConfig, check_config, deepspeed_config

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(phases=[PhaseConfig(patch_size=128, batch_size=8, lr=2e-4, steps=10)], **kw)


def _ds(precision: str, zero: int = 0) -> dict:
    return deepspeed_config(_cfg(precision=precision, zero_stage=zero), micro_batch=4, world_size=2, lr=1e-4)


def test_each_precision_maps_to_one_deepspeed_section() -> None:
    sections = {p: {k for k in ("bf16", "fp16", "torch_autocast") if k in _ds(p)} for p in PRECISIONS}
    assert sections == {
        "fp32": set(),
        "bf16": {"bf16"},
        "fp16": {"fp16"},
        "autocast_bf16": {"torch_autocast"},
        "autocast_fp16": {"torch_autocast"},
    }


@pytest.mark.parametrize("precision,dtype", [("autocast_bf16", "bfloat16"), ("autocast_fp16", "float16")])
def test_autocast_keeps_fp32_weights_and_fp32_gradient_reduction(precision: str, dtype: str) -> None:
    ds = _ds(precision, zero=1)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds  # whole-model casting would defeat the fp32 masters


def test_deepspeed_parses_the_autocast_section() -> None:
    pytest.importorskip("deepspeed")
    import torch
    from deepspeed.runtime.config import (
        get_lower_precision_safe_modules,
        get_torch_autocast_dtype,
        get_torch_autocast_enabled,
    )

    for precision, dtype in (("autocast_bf16", torch.bfloat16), ("autocast_fp16", torch.float16)):
        ds = _ds(precision)
        assert get_torch_autocast_enabled(ds) is True and get_torch_autocast_dtype(ds) == dtype
        assert get_lower_precision_safe_modules(ds) == []


def test_fp16_variants_need_a_gpu_and_autocast_bf16_does_not() -> None:
    for precision in ("fp16", "autocast_fp16"):
        problems = check_config(
            _cfg(precision=precision), world_size=1, train_samples=None, num_shards=None, has_gpu=False
        )
        assert any(f"train.precision={precision} needs a GPU" in p for p in problems)
        assert (
            check_config(_cfg(precision=precision), world_size=1, train_samples=None, num_shards=None, has_gpu=True)
            == []
        )
    for precision in ("fp32", "bf16", "autocast_bf16"):
        assert (
            check_config(_cfg(precision=precision), world_size=1, train_samples=None, num_shards=None, has_gpu=False)
            == []
        )


def test_precision_and_compile_are_typed_keys() -> None:
    stages = [{"patch_size": 64, "batch_size": 2, "lr": 1e-3, "steps": 1}]
    cfg = load_section(
        TrainConfig, {"train": {"phases": stages, "precision": "autocast_bf16", "compile": True}}, "train"
    )
    assert cfg.precision == "autocast_bf16" and cfg.compile is True
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_section(TrainConfig, {"train": {"phases": stages, "precision": "amp"}}, "train")
    with pytest.raises(ConfigError, match=r"train\.compile"):
        load_section(TrainConfig, {"train": {"phases": stages, "compile": "yes"}}, "train")


def test_paper_profiles_use_the_official_autocast_scheme() -> None:
    """The official recipe is fp16 autocast + GradScaler with fp32 weights: autocast_fp16 is that scheme."""
    params = read_params(PARAMS)
    from pipelines.params import load_profile

    for profile in ("train_spad", "train_agan", "train_densehaze"):
        cfg = load_profile(params, profile)[0]
        assert cfg.precision == "autocast_fp16", profile
        assert cfg.compile is False  # opt-in
    assert load_profile(params, "train")[0].precision == "fp32"
