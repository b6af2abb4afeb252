"""The champion gate and the registry's pure helpers.

pipelines.gate, pipelines.model_registry, the register section.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml

from ast_model.config import ConfigError, load_section
from pipelines.gate import RegisterConfig, Score, decide, registered_model_name
from pipelines.model_registry import SERVING_PACKAGES, pinned_requirements

REPO = Path(__file__).resolve().parents[2]
BASE = Score(
    psnr=30.0,
    ssim=0.9,
    dataset="embedded_rain",
    split="test",
    protocol="float",
    y_channel=False,
    crop_border=0,
    test_data="abc",
)


def score(**changes: object) -> Score:
    return dataclasses.replace(BASE, **changes)


def test_first_model_becomes_champion() -> None:
    decision = decide(score(psnr=12.0), None)
    assert decision.promote and decision.reason.startswith("first champion")


def test_better_wins_worse_and_tie_do_not() -> None:
    better = decide(score(psnr=30.5), BASE, champion_version="3")
    assert better.promote and "beats v3's 30.0000 dB by 0.5000 dB" in better.reason
    worse = decide(score(psnr=29.0), BASE, champion_version="3")
    assert not worse.promote and "does not beat v3's 30.0000 dB" in worse.reason
    assert not decide(score(), BASE, champion_version="3").promote  # a tie keeps the champion


def test_min_gain() -> None:
    assert not decide(score(psnr=30.05), BASE, champion_version="1", min_gain_db=0.1).promote
    assert "by more than 0.1 dB" in decide(score(psnr=30.05), BASE, champion_version="1", min_gain_db=0.1).reason
    assert decide(score(psnr=30.2), BASE, champion_version="1", min_gain_db=0.1).promote


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"dataset": "embedded_haze"}, "dataset"),
        ({"split": "val"}, "split"),
        ({"protocol": "matlab"}, "protocol"),
        ({"y_channel": True}, "y_channel"),
        ({"crop_border": 4}, "crop_border"),
        ({"test_data": "other"}, "test images changed"),
    ],
)
def test_scores_measured_differently_are_not_compared(changes: dict, named: str) -> None:
    # Even a much higher PSNR does not win against a champion scored another way.
    decision = decide(score(psnr=99.0, **changes), BASE, champion_version="2")
    assert not decision.promote and "not comparable with v2" in decision.reason and named in decision.reason


def test_test_data_check_can_be_relaxed_and_unknown_hashes_compare() -> None:
    assert decide(score(psnr=31.0, test_data="other"), BASE, champion_version="1", same_test_data=False).promote
    assert decide(score(psnr=31.0, test_data=""), BASE, champion_version="1").promote


def test_broken_scores_and_unscored_champions_never_win() -> None:
    assert not decide(score(psnr=math.nan), None).promote
    assert not decide(score(psnr=-math.inf), BASE, champion_version="1").promote
    assert decide(score(psnr=math.inf), BASE, champion_version="1").promote  # exact restoration
    unscored = decide(score(psnr=50.0), None, champion_version="4")
    assert not unscored.promote and "v4 has no readable test.* score tags" in unscored.reason


def test_score_tags_round_trip() -> None:
    tags = BASE.to_tags()
    assert all(isinstance(v, str) for v in tags.values())
    assert Score.from_tags(tags) == BASE
    assert Score.from_tags({**tags, "test.y_channel": "true"}).y_channel is True
    assert Score.from_tags({k: v for k, v in tags.items() if k != "test.psnr"}) is None
    assert Score.from_tags({**tags, "test.psnr": "n/a"}) is None


def test_score_from_metrics_and_a_metrics_file_missing_a_field(tmp_path: Path) -> None:
    from ast_model.artifacts import EvaluationMetrics

    metrics = EvaluationMetrics(
        psnr=30.0,
        ssim=0.9,
        input_psnr=25.0,
        input_ssim=0.8,
        protocol="float",
        y_channel=False,
        crop_border=0,
        count=0,
        per_image=[],
        dataset="embedded_rain",
        split="test",
        test_index_sha256="abc",
    )
    assert Score.from_metrics(EvaluationMetrics.load(metrics.save(tmp_path / "m.json"))) == BASE
    data = json.loads((tmp_path / "m.json").read_text())
    del data["protocol"]
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="protocol"):
        EvaluationMetrics.load(tmp_path / "m.json")


def test_registered_model_name() -> None:
    assert registered_model_name("{task}-ast", "rain") == "rain-ast"
    assert registered_model_name("ast-derain", "rain") == "ast-derain"
    with pytest.raises(ConfigError, match="only {task}"):
        registered_model_name("{dataset}-ast", "rain")
    with pytest.raises(ConfigError, match="use letters"):
        registered_model_name("{task} ast/x", "rain")


def test_requirements_are_pinned_from_the_project_file(tmp_path: Path) -> None:
    pins = pinned_requirements(REPO / "requirements.txt")
    assert [p.split("==")[0].lower() for p in pins] == [p.lower() for p in SERVING_PACKAGES]
    assert all("==" in p and p.split("==")[1] for p in pins)
    assert "torch==2.13.0" in pins  # never the local "+cpu" build tag of pip freeze
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy==1.0  # pinned\nscikit_image==0.1\ntorch>=2\n")
    assert pinned_requirements(req, ["numpy", "scikit-image"]) == ["numpy==1.0", "scikit_image==0.1"]
    with pytest.raises(ConfigError, match="no '==' pin for torch, mlflow"):
        pinned_requirements(req, ["torch", "numpy", "mlflow"])
    with pytest.raises(ConfigError, match="cannot read"):
        pinned_requirements(tmp_path / "missing.txt")


def test_register_section_is_strict(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"register": {"model_name": "{task}-ast", "min_gain": 0.1}}))
    with pytest.raises(ConfigError, match="register.min_gain"):
        load_section(RegisterConfig, params, "register")
    params.write_text(yaml.safe_dump({"register": {"min_gain_db": -1, "alias": "a b"}}))
    with pytest.raises(ConfigError) as err:  # the loader runs the value checks too, all reported together
        load_section(RegisterConfig, params, "register")
    assert any("min_gain_db" in p for p in err.value.problems) and any("alias" in p for p in err.value.problems)
    assert load_section(RegisterConfig, REPO / "params.yaml", "register") == RegisterConfig()
