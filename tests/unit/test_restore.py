"""Whole-image, tiled and self-ensembled inference (ast_model.eval.restore)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ast_model.eval.restore import (
    RestoreOptions,
    _ramp,  # the blending weight itself is the seam guarantee
    dihedral,
    dihedral_inverse,
    restore_image,
    restore_tensor,
    self_ensemble,
    tile_forward,
    tile_size_for_budget,
    tile_starts,
)

CPU = torch.device("cpu")


class ConvNet(nn.Module):
    """A small translation-equivariant residual conv net (receptive field 7x7), like a restoration model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 3, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


class Recorder(nn.Module):
    """Identity that records the spatial shape of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[-2:]))
        return x


def smooth_image(h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w) smooth colour gradients with gentle waves, in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    chans = [0.5 + 0.4 * torch.sin(3 * xx + 2 * yy + p) for p in (0.0, 1.0, 2.0)]
    return torch.stack(chans)[None]


# ---------------------------------------------------------------------------------------------- tiling
def test_tile_starts_cover_the_image_with_the_last_tile_flush() -> None:
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(101, 40, 10) == [0, 30, 60, 61]
    assert tile_starts(40, 40, 10) == [0]
    assert tile_starts(7, 40, 10) == [0]
    for length in range(41, 200, 7):
        starts = tile_starts(length, 40, 12)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + 40] = True
        assert covered.all() and starts[-1] + 40 == length
        assert all(b - a <= 40 - 12 for a, b in itertools.pairwise(starts))  # overlap at least 12
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 16, 16)


def test_blend_ramps_cross_fade_to_one_and_never_vanish() -> None:
    n, overlap = 48, 16
    w = _ramp(n, overlap).double()
    assert w.min() > 0 and w.max() == 1
    # two tiles overlapping by exactly `overlap`: the weights sum to 1 across the overlap
    torch.testing.assert_close(w[-overlap:] + w[:overlap], torch.ones(overlap, dtype=torch.float64))


def test_tiled_equals_whole_for_a_pointwise_model() -> None:
    model = nn.Conv2d(3, 3, 1)  # no spatial context: every tile output is exact, so blending must be too
    x = torch.rand(2, 3, 45, 70, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(x)
        for tile, overlap in [(16, 4), (20, 0), (32, 24), (64, 8)]:
            torch.testing.assert_close(tile_forward(model, x, tile, overlap, CPU), whole, atol=1e-5, rtol=0)


def test_tiled_vs_whole_on_a_smooth_image_is_tiny_and_blending_removes_seams() -> None:
    model = ConvNet().eval()
    x = smooth_image(96, 130)
    with torch.no_grad():
        whole = model(x)
        blended = tile_forward(model, x, tile=40, overlap=16, device=CPU)
        hard = tile_forward(model, x, tile=40, overlap=0, device=CPU)  # abutting tiles: visible seams
    err_blended = (blended - whole).abs().max().item()
    err_hard = (hard - whole).abs().max().item()
    assert err_blended < 2e-3
    assert err_blended < err_hard / 4


def test_mean_blend_reproduces_the_official_tiling_and_plain_average() -> None:
    # docs/recipes.md#tiling: a 720x480 image, tiles 384 with overlap 80 -> rows {0, 96} x cols {0, 304, 336}.
    class TileIndex(nn.Module):
        """Outputs the running index of the call, so the merge of overlapping tiles is visible."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[int, int]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append(tuple(x.shape[-2:]))
            return torch.full_like(x, float(len(self.calls)))

    model = TileIndex()
    x = torch.zeros(1, 3, 480, 720)
    out = tile_forward(model, x, tile=384, overlap=80, device=CPU, blend="mean")
    expected_sum, count = torch.zeros(480, 720), torch.zeros(480, 720)
    for i, (top, left) in enumerate((r, c) for r in (0, 96) for c in (0, 304, 336)):
        expected_sum[top : top + 384, left : left + 384] += i + 1
        count[top : top + 384, left : left + 384] += 1
    assert model.calls == [(384, 384)] * 6
    torch.testing.assert_close(out[0, 0], expected_sum / count)


def test_auto_tiling_follows_the_memory_budget() -> None:
    model = Recorder()
    x = torch.rand(1, 3, 50, 60)
    restore_tensor(model, x, RestoreOptions(memory_budget=10**9, bytes_per_pixel=100))
    assert model.shapes == [(50, 60)]  # fits: one whole-image pass
    model.shapes.clear()
    out = restore_tensor(model, x, RestoreOptions(memory_budget=32 * 32 * 100, bytes_per_pixel=100, overlap=8))
    assert max(max(s) for s in model.shapes) <= 32 and len(model.shapes) > 1
    torch.testing.assert_close(out, x)  # identity survives tiling exactly


def test_tile_size_for_budget_rounds_to_the_model_multiple() -> None:
    assert tile_size_for_budget(1000 * 1000 * 10, 10) == 1000
    assert tile_size_for_budget(1000 * 1000 * 10, 10, multiple=128) == 896
    assert tile_size_for_budget(1, 10, multiple=128) == 128  # never below one padding multiple


# ---------------------------------------------------------------------------------------------- ensemble
@pytest.mark.parametrize("k", range(8))
def test_dihedral_inverse_undoes_each_transform(k: int) -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)


def test_the_eight_transforms_are_distinct() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    assert len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}) == 8


def test_self_ensemble_of_an_equivariant_function_is_exact() -> None:
    # A symmetric blur with zero padding commutes with every rotation and flip.
    blur = nn.Conv2d(3, 3, 3, padding=1, bias=False, groups=3)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    blur.weight.data[:] = kernel
    x = torch.rand(2, 3, 17, 23, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(self_ensemble(blur, x), blur(x), atol=1e-6, rtol=0)


def test_self_ensemble_averages_the_eight_transforms_of_a_non_equivariant_function() -> None:
    model = ConvNet().eval()  # random kernels: not rotation-equivariant
    x = torch.rand(1, 3, 12, 19, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = self_ensemble(model, x)
        outs = []
        for k in range(4):  # independent construction with numpy: rotations, then their mirror images
            for flip in (False, True):
                xi = np.rot90(x.numpy(), k, axes=(2, 3))
                xi = xi[..., ::-1] if flip else xi
                yi = model(torch.from_numpy(xi.copy())).numpy()
                yi = yi[..., ::-1] if flip else yi
                outs.append(np.rot90(yi, -k, axes=(2, 3)))
        expected = torch.from_numpy(np.mean(outs, axis=0))
        assert (got - model(x)).abs().max() > 1e-3  # the ensemble really changes the output
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_ensemble_composes_with_tiling() -> None:
    model = nn.Conv2d(3, 3, 1)
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    out = restore_tensor(model, x, RestoreOptions(tile=16, overlap=4, ensemble=True))
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- images
def test_restore_image_clamps_keeps_shape_and_restores_train_mode() -> None:
    model = ConvNet().train()
    image = np.random.default_rng(0).random((1, 1, 3)).astype(np.float32)  # a 1x1 image
    for opts in (RestoreOptions(tile=None), RestoreOptions(tile=8, ensemble=True)):
        out = restore_image(model, image, opts)
        assert out.shape == (1, 1, 3) and out.dtype == np.float32
    big = restore_image(lambda_model(lambda t: t * 3), np.full((5, 7, 3), 0.5, np.float32))
    assert big.max() == 1.0  # clamped
    assert model.training  # the caller's mode is kept


def lambda_model(fn) -> nn.Module:
    class _Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(x)

    return _Fn()


def test_bad_requests_give_clear_errors() -> None:
    model = ConvNet()
    with pytest.raises(ValueError, match="CUDA"):
        restore_tensor(model, torch.rand(1, 3, 8, 8), RestoreOptions(precision="fp16"), device="cpu")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        restore_tensor(model, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        restore_image(model, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="precision"):
        RestoreOptions(precision="int8")


def test_real_tiny_ast_restores_any_size_whole_and_tiled() -> None:
    from ast_model import create_model

    model = create_model("ast_t", embed_dim=8, depths=[1] * 9)
    image = np.random.default_rng(0).random((130, 70, 3)).astype(np.float32)  # 2 tiles of 128 rows
    whole = restore_image(model, image, RestoreOptions(tile=None))
    tiled = restore_image(model, image, RestoreOptions(tile=128, overlap=32))
    assert whole.shape == tiled.shape == image.shape
    assert np.isfinite(tiled).all()
    assert restore_image(model, image[:1, :1], RestoreOptions(tile=None)).shape == (1, 1, 3)
