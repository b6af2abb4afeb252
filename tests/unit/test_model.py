"""AST network: sizes, official equivalence, any-size inputs, spec details, fast vs reference path."""

from __future__ import annotations

import pytest
import torch

import ast_model
from ast_model.checkpoint import official_key
from ast_model.nn.ast import drop_path_rates
from ast_model.nn.attention import WindowASSA
from ast_model.nn.blocks import DropPath
from ast_model.nn.windows import shift_attention_mask, window_partition, window_reverse
from tests.oracle_ast import official_forward, official_json

TINY = dict(embed_dim=8, depths=[1] * 9)


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter so that no branch sits at its trivial init (w = ones, zero biases).

    Equivalence tests use scale 0.02: larger weights grow the activations (and fp32 rounding) past the
    tolerances that are stated for trained-scale weights.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def _official_fp64(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in fp64 under the official tensor names (what the oracle reads)."""
    return {official_key(k): (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,count", [("ast_t", 6_645_347), ("ast_b", 65_362_455)])
def test_exact_parameter_counts(name: str, count: int) -> None:
    model = ast_model.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == count
    spec = official_json(name[-1].upper())
    assert sum(p.numel() for p in model.parameters()) == spec["num_params"]
    assert len(model.state_dict()) == spec["num_entries"]


def test_list_models_and_unknown_options() -> None:
    assert ast_model.list_models() == ["ast_b", "ast_t"]
    with pytest.raises(ValueError, match="unknown model 'ast_x'"):
        ast_model.create_model("ast_x")
    with pytest.raises(ValueError, match="unknown model option"):
        ast_model.create_model("ast_t", embed_dims=8)
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        ast_model.create_model("ast_t", attention="nope")
    with pytest.raises(ValueError, match="unknown feed-forward 'nope'"):
        ast_model.create_model("ast_t", ffn="nope")


@pytest.mark.parametrize(
    "variant,side,tol",
    [
        ("T", 128, 1e-5),
        pytest.param("T", 256, 1e-5, marks=pytest.mark.slow),
        pytest.param("B", 128, 5e-5, marks=pytest.mark.slow),
    ],
)
def test_matches_official_forward(variant: str, side: int, tol: float) -> None:
    """fp32 fast path vs the official computation in fp64 (built at img_size 128: unshifted bottleneck)."""
    torch.manual_seed(1)
    model = _randomise(ast_model.create_model(f"ast_{variant.lower()}"), scale=0.02).eval()
    x = torch.rand(1, 3, side, side)
    sd64 = _official_fp64(model)
    with torch.no_grad():
        want = official_forward(sd64, official_json(variant)["blocks_img_size_128"], x.double())
        got = model(x)
    assert got.shape == x.shape
    assert (got.double() - want).abs().max().item() < tol


@pytest.mark.slow
def test_bottleneck_shift_option_matches_official_256_build() -> None:
    torch.manual_seed(2)
    model = _randomise(ast_model.create_model("ast_t", bottleneck_shift=True), scale=0.02).eval()
    x = torch.rand(1, 3, 256, 256)
    sd64 = _official_fp64(model)
    with torch.no_grad():
        want = official_forward(sd64, official_json("T")["blocks_img_size_256"], x.double())
        got = model(x)
        unshifted = official_forward(sd64, official_json("T")["blocks_img_size_128"], x.double())
    assert (got.double() - want).abs().max().item() < 1e-5
    assert (got.double() - unshifted).abs().max().item() > 1e-4  # the option really changes the model


@pytest.mark.parametrize("shape", [(1, 3, 67, 131), (2, 3, 1, 1), (1, 3, 300, 200)])
def test_any_size_forward(shape: tuple[int, ...]) -> None:
    model = ast_model.create_model("ast_t").eval()
    with torch.no_grad():
        y = model(torch.rand(shape))
    assert y.shape == shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "zeros"])
def test_padding_changes_nothing_for_multiples_of_128(pad_mode: str) -> None:
    torch.manual_seed(3)
    model = _randomise(ast_model.create_model("ast_t", **TINY, pad_mode=pad_mode)).eval()
    x = torch.rand(1, 3, 128, 256)
    with torch.no_grad():
        direct = model.output_proj(model._features(x)) + x
        assert torch.equal(model(x), direct)


def test_padding_is_cropped_and_local() -> None:
    """A 100x120 image gives the same top-left content as when it is embedded in a larger padded one."""
    model = ast_model.create_model("ast_t", **TINY, pad_mode="zeros").eval()
    x = torch.rand(1, 3, 100, 120)
    padded = torch.nn.functional.pad(x, (0, 8, 0, 28))  # what the model does internally: 128x128
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :100, :120], atol=1e-6)


def test_branch_weights_start_at_half() -> None:
    model = ast_model.create_model("ast_t")
    attns = [m for m in model.modules() if isinstance(m, WindowASSA)]
    assert len(attns) == 10  # bottleneck 2 + decoder 4x2; the encoder has no attention
    for m in attns:
        assert torch.equal(torch.softmax(m.w, 0), torch.tensor([0.5, 0.5]))
    assert not any(hasattr(b, "attn") for b in model.encoderlayer_0.blocks)


def test_sparse_branch_is_unnormalised_squared_relu() -> None:
    """With the dense weight driven to 0, the output equals relu(S)^2 v (rows need not sum to 1)."""
    torch.manual_seed(4)
    attn = WindowASSA(dim=8, num_heads=2, win_size=4).eval()
    with torch.no_grad():
        attn.w.copy_(torch.tensor([-1e4, 0.0]))  # softmax(w) = (0, 1): sparse branch only
    x = torch.randn(3, 16, 8)
    q = attn.qkv.to_q(x).view(3, 16, 2, 4).transpose(1, 2) * attn.scale
    k, v = attn.qkv.to_kv(x).view(3, 16, 2, 2, 4).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-2, -1) + attn.relative_bias()
    a = torch.relu(s) ** 2
    assert not torch.allclose(a.sum(-1), torch.ones(()))  # unnormalised
    want = attn.proj((a @ v).transpose(1, 2).reshape(3, 16, 8))
    for impl in ("fast", "reference"):
        attn.impl = impl
        with torch.no_grad():
            assert torch.allclose(attn(x), want, atol=1e-5)


def test_shift_mask_semantics() -> None:
    mask = shift_attention_mask(16, 16, 8, 4)
    assert mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window lies in one region
    assert torch.equal(mask, mask.transpose(1, 2))
    # last window: 4 regions of 4x4 tokens; token (0,0) and (0,4) of the window are in different regions
    last = mask[3]
    assert last[0, 4] == -100 and last[0, 1] == 0 and last[0, 32] == -100 and last[0, 36] == -100
    assert (last == 0).sum() == 4 * 16 * 16  # each token sees the 16 of its own region
    # non-square maps: 2 x 3 windows
    assert shift_attention_mask(16, 24, 8, 4).shape == (6, 64, 64)


def test_window_partition_round_trip() -> None:
    x = torch.randn(2, 16, 24, 5)
    w = window_partition(x, 8)
    assert w.shape == (2 * 2 * 3, 64, 5)
    assert torch.equal(w[1], x[0, :8, 8:16].reshape(64, 5))  # batch-major, then row, then column
    assert torch.equal(window_reverse(w, 8, 16, 24), x)


def test_stochastic_depth_rates_match_spec() -> None:
    spec = official_json("T")["blocks_img_size_128"]
    rates = [r for level in drop_path_rates((2,) * 9, 0.1) for r in level]
    order = [f"encoderlayer_{i}" for i in range(4)] + ["conv"] + [f"decoderlayer_{i}" for i in range(4)]
    want = [b["drop_path"] for s in order for b in spec if b["name"].startswith(s + ".")]
    assert rates == pytest.approx(want, abs=1e-6)
    model = ast_model.create_model("ast_t")
    assert isinstance(model.encoderlayer_0.blocks[0].drop_path, torch.nn.Identity)  # rate 0
    assert isinstance(model.conv.blocks[1].drop_path, DropPath) and model.conv.blocks[1].drop_path.p == 0.1


def test_drop_path_per_sample_and_rescaled() -> None:
    torch.manual_seed(5)
    dp = DropPath(0.5).train()
    y = dp(torch.ones(64, 3, 4))
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped
    assert torch.equal(dp.eval()(torch.ones(2, 3)), torch.ones(2, 3))


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(6)
    model = _randomise(ast_model.create_model("ast_t", **TINY)).train()
    x = torch.rand(2, 3, 128, 128)
    model(x).abs().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fast_and_reference_paths_agree_forward_and_backward() -> None:
    torch.manual_seed(7)
    model = _randomise(ast_model.create_model("ast_t", **TINY, drop_path_rate=0.0)).train()
    x = torch.rand(2, 3, 128, 256)
    grads = {}
    outs = {}
    for impl in ("reference", "fast"):
        model.set_impl(impl)
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        outs[impl] = out.detach()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert (outs["fast"] - outs["reference"]).abs().max() < 1e-5
    for n, g in grads["reference"].items():
        assert (grads["fast"][n] - g).abs().max() <= 1e-4 * g.abs().max(), n


def test_custom_autograd_functions_gradcheck() -> None:
    from ast_model.nn.functional import adaptive_sparse_attention as assa
    from ast_model.nn.functional import gated_dw_tail

    torch.manual_seed(8)
    d = dict(dtype=torch.float64, requires_grad=True)
    q, k, v = (torch.randn(2, 2, 2, 4, 3, **d) for _ in range(3))
    bias = torch.randn(2, 4, 4, **d)
    w = torch.softmax(torch.randn(2, dtype=torch.float64), 0).requires_grad_()
    mask = torch.tensor([0.0, -100.0], dtype=torch.float64)[torch.randint(0, 2, (2, 1, 4, 4))]
    assert torch.autograd.gradcheck(lambda *t: assa(*t[:3], t[3] + mask, t[4]), (q, k, v, bias, w))
    assert torch.autograd.gradcheck(assa, (q, k, v, bias, w))
    a, g = torch.randn(2, 5, 6, 4, **d), torch.randn(2, 5, 6, 4, **d)
    dw_w, dw_b = torch.randn(4, 1, 3, 3, **d), torch.randn(4, **d)
    w2, b2 = torch.randn(3, 4, **d), torch.randn(3, **d)
    assert torch.autograd.gradcheck(gated_dw_tail, (a, g, dw_w, dw_b, w2, b2))


def test_count_macs_matches_paper_convention() -> None:
    assert ast_model.count_macs(ast_model.create_model("ast_t"), (1, 3, 256, 256)) == pytest.approx(13.443e9, rel=1e-4)


def test_count_macs_ast_b() -> None:
    assert ast_model.count_macs(ast_model.create_model("ast_b"), (1, 3, 256, 256)) == pytest.approx(109.831e9, rel=1e-4)


@pytest.mark.parametrize("masked", [False, True], ids=["bias", "bias+shift_mask"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_cpu_inference_attention_in_window_chunks_equals_the_autograd_path(
    masked: bool, autocast: bool, monkeypatch
) -> None:
    """Without autograd on the CPU the ASSA core runs a chunk of windows at a time (cache-sized score
    buffers); windows are independent, so the result is bit for bit the autograd function's."""
    from ast_model.nn import functional

    monkeypatch.setattr(functional, "_CHUNK_BYTES", 3 * 2 * 16 * 16 * 4)  # 3 windows per chunk: 7 = 3 + 3 + 1
    g = torch.Generator().manual_seed(0)
    b, nw, h, n, d = 2, 7, 2, 16, 8
    q, k, v = (torch.randn(b, nw, h, n, d, generator=g) for _ in range(3))
    bias = torch.randn(nw, h, n, n, generator=g) if masked else torch.randn(h, n, n, generator=g)
    w = torch.softmax(torch.randn(2, generator=g), dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad():
            assert functional._chunked_inference(q, k, v, bias, w)
            chunked = functional.adaptive_sparse_attention(q, k, v, bias, w)
        whole = functional._AdaptiveSparseAttention.apply(q, k, v, bias, w)
    assert chunked.dtype == whole.dtype and torch.equal(chunked, whole)
    w.requires_grad_(True)
    assert not functional._chunked_inference(q, k, v, bias, w)  # training keeps the autograd function
