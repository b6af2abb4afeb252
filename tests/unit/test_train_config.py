"""Training config: strict loading, stage resolution, pre-launch checks, the DeepSpeed config, profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from ast_model.config import ConfigError, load_section, read_params
from ast_model.train.config import (
    PhaseConfig,
    ScheduleConfig,
    TrainConfig,
    check_config,
    deepspeed_config,
    resolve_phases,
)
from pipelines.params import load_profile

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def _cfg(**kw) -> TrainConfig:
    stages = kw.pop("phases", [PhaseConfig(patch_size=128, batch_size=32, lr=2e-4, steps=10)])
    return TrainConfig(phases=stages, **kw)


def test_unknown_and_mistyped_keys_are_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.phases\[0\]\.patchsize"):
        load_section(TrainConfig, {"train": {"phases": [{"patchsize": 64, "batch_size": 2, "lr": 1e-3}]}}, "train")
    with pytest.raises(ConfigError, match=r"train\.zero_stage"):
        load_section(TrainConfig, {"train": {"phases": [], "zero_stage": 3}}, "train")
    from pipelines.params import load_profile  # the launch key is the pipeline's (pipelines.launch)

    _, _, problems = load_profile({"train": {"phases": [], "launch": {"nprocs": 2}}}, "train")
    assert any("train.launch.nprocs" in p for p in problems)


def test_global_batch_splits_into_micro_batches_per_rank() -> None:
    cfg = _cfg(phases=[PhaseConfig(128, 32, 2e-4, steps=5), PhaseConfig(256, 16, 1e-4, steps=7)], grad_accum=2)
    st = resolve_phases(cfg, world_size=4, train_samples=None)
    assert [(s.micro_batch, s.global_batch, s.steps) for s in st] == [(4, 32, 5), (2, 16, 7)]


def test_epochs_become_steps_like_the_official_loader() -> None:
    # AGAN-Data: 861 pairs, batch 32 -> ceil(861 / 32) = 27 it/epoch; 300 epochs, 3 warm-up epochs.
    cfg = load_section(
        TrainConfig,
        {
            "train": {
                "phases": [{"patch_size": 128, "batch_size": 32, "lr": 2e-4, "epochs": 300}],
                "schedule": {"warmup_epochs": 3},
            }
        },
        "train",
    )
    (st,) = resolve_phases(cfg, world_size=2, train_samples=861)
    assert (st.steps, st.warmup_steps, st.micro_batch) == (8100, 81, 16)


def test_batch_that_does_not_divide_is_reported_with_the_numbers() -> None:
    cfg = _cfg(phases=[PhaseConfig(128, 6, 2e-4, steps=5)], grad_accum=2)
    problems = check_config(cfg, world_size=2, train_samples=100, num_shards=8, has_gpu=False)
    assert any("train.phases[0].batch_size=6" in p and "2 x grad_accum 2 = 4" in p for p in problems)
    with pytest.raises(ConfigError, match="does not divide"):
        resolve_phases(cfg, world_size=2, train_samples=100)


def test_check_config_collects_every_problem() -> None:
    cfg = _cfg(
        phases=[PhaseConfig(96, 8, 2e-4, steps=5), PhaseConfig(128, 8, 1e-4)],  # second: no length
        precision="fp16",
        num_workers=2,
        schedule=ScheduleConfig(warmup_steps=1, warmup_epochs=1.0),
    )
    problems = check_config(
        cfg,
        world_size=4,
        train_samples=100,
        num_shards=4,
        has_gpu=False,
        shard_dir="data/shards/x/train",
        pad_multiple=64,
    )
    text = "\n".join(problems)
    assert "8 readers" in text and "only 4 training shard(s) in data/shards/x/train" in text
    assert "fp16 needs a GPU" in text
    assert "train.phases[1]: give exactly one of steps / epochs" in text
    assert "warmup_steps or warmup_epochs, not both" in text
    assert "train.phases[0].patch_size=96 is not a multiple" in text


def test_good_config_has_no_problems() -> None:
    cfg = _cfg(phases=[PhaseConfig(128, 8, 2e-4, steps=5)])
    assert check_config(cfg, world_size=2, train_samples=100, num_shards=4, has_gpu=False, pad_multiple=128) == []


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_deepspeed_config_computes_train_batch_size(precision: str) -> None:
    cfg = _cfg(precision=precision, zero_stage=2, grad_accum=3, grad_clip=1.0)
    ds = deepspeed_config(cfg, micro_batch=4, world_size=2, lr=1e-4)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"] == {"stage": 2} and ds["gradient_clipping"] == 1.0
    opt = ds["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["torch_adam"] is True
    assert opt["params"]["weight_decay"] == 0.02 and opt["params"]["betas"] == [0.9, 0.999]
    assert ds.get("bf16", {}).get("enabled", False) == (precision == "bf16")
    assert ds.get("fp16", {}).get("enabled", False) == (precision == "fp16")


@pytest.mark.parametrize(
    ("profile", "samples", "world", "want_steps"),
    [
        ("train", None, 1, [300]),
        # docs/recipes.md#spad: SPAD ~19,953 and ~39,906 it/epoch (N = 638,492) x 20 and 15 epochs.
        ("train_spad", 638_492, 2, [399_060, 598_590]),
        # AGAN-Data: 27 / 54 / 108 it/epoch x 300 / 200 / 150 epochs (35.1k iterations).
        ("train_agan", 861, 2, [8_100, 10_800, 16_200]),
        # Dense-Haze: 12 it/epoch at batch 4, 23 at batch 2 (N = 45).
        ("train_densehaze", 45, 2, [24_000, 14_400, 9_600, 6_900, 1_840]),
    ],
)
def test_params_profiles_load_and_match_the_recipes(profile: str, samples, world: int, want_steps: list[int]) -> None:
    cfg, launch, problems = load_profile(read_params(PARAMS), profile, source=str(PARAMS))
    assert not problems and launch is not None
    stages = resolve_phases(cfg, world_size=world, train_samples=samples)
    assert [s.steps for s in stages] == want_steps
    if profile == "train":  # the short CPU default: identity start + MSE (docs/training.md)
        assert cfg.start_as_identity and cfg.loss == "mse"
    else:  # the paper recipes: official init and loss
        assert not cfg.start_as_identity and cfg.loss == "charbonnier" and cfg.loss_eps == 1e-3
        assert cfg.model == "ast_b" and cfg.grad_clip == 0.0 and cfg.optimizer.weight_decay == 0.02
        assert cfg.schedule.warmup_epochs == 3 and cfg.schedule.min_lr == 1e-6
