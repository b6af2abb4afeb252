"""Official checkpoints load strictly; the project checkpoint format round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ast_model
from ast_model.checkpoint import CheckpointError, project_key, read_checkpoint
from ast_model.nn.windows import relative_position_index
from tests.oracle_ast import official_json

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_state_dict(variant: str, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A state dict with exactly the names, shapes and dtypes of an official checkpoint (random values)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for e in official_json(variant)["entries"]:
        if e["key"].endswith("relative_position_index"):
            t = relative_position_index(8)
        else:
            t = torch.randn(e["shape"], generator=g, dtype=DTYPES[e["dtype"]]) * 0.02
        sd[prefix + e["key"]] = t
    return sd


@pytest.mark.parametrize("variant", ["T", "B"])
def test_official_checkpoint_file_loads_strictly_and_infers_variant(variant: str, tmp_path: Path) -> None:
    sd = official_state_dict(variant)
    path = tmp_path / "model_best.pth"
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    model = ast_model.load_official(path)
    assert model.variant == f"ast_{variant.lower()}"
    assert not model.training
    loaded = model.state_dict()
    for key, value in sd.items():
        assert torch.equal(loaded[project_key(key[len("module.") :])], value)  # official `mlp` is our `ffn`


def test_bare_state_dict_without_prefix_and_explicit_variant() -> None:
    sd = official_state_dict("T", prefix="")
    model = ast_model.load_official(sd, variant="ast_t", bottleneck_shift=True)
    assert model.config.bottleneck_shift
    assert torch.equal(model.state_dict()["output_proj.proj.0.bias"], sd["output_proj.proj.0.bias"])


def test_wrong_shape_and_extra_and_missing_keys_are_listed_together() -> None:
    sd = official_state_dict("T")
    sd["module.output_proj.proj.0.bias"] = torch.zeros(4)
    sd["module.decoderlayer_0.blocks.0.attn.attn_mask"] = torch.zeros(1)
    del sd["module.conv.blocks.1.attn.w"]
    with pytest.raises(CheckpointError) as err:
        ast_model.load_official(sd, variant="ast_t")
    msg = str(err.value)
    assert "missing 1: conv.blocks.1.attn.w" in msg
    assert "unexpected 1: decoderlayer_0.blocks.0.attn.attn_mask" in msg
    assert "output_proj.proj.0.bias: checkpoint (4,) vs model (3,)" in msg


def test_wrong_variant_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match="does not fit the model"):
        ast_model.load_official(official_state_dict("T"), variant="ast_b")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        ast_model.load_official(bad)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")


def test_project_checkpoint_round_trip(tmp_path: Path) -> None:
    model = ast_model.create_model("ast_t", embed_dim=8, depths=[1] * 9, bottleneck_shift=True, pad_mode="zeros")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = ast_model.save_checkpoint(model, tmp_path / "sub" / "final.pt", meta={"step": 7, "psnr": 31.5})
    assert [p.name for p in path.parent.iterdir()] == ["final.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)  # plain data: loadable without any project code
    assert raw["format"] == "ast-pipeline" and raw["variant"] == "ast_t"
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    back = ast_model.load_checkpoint(path)
    assert back.config == model.config
    assert back.checkpoint_meta == {"step": 7, "psnr": 31.5}
    x = torch.rand(1, 3, 40, 50)
    model.eval()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_load_checkpoint_rejects_official_files(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"epoch": 1, "state_dict": official_state_dict("T")}, path)
    with pytest.raises(CheckpointError, match="use load_official"):
        ast_model.load_checkpoint(path)
