"""Attention entropy (the paper's Eq. 9, Table 6) and branch weights (Figure 4)."""

from __future__ import annotations

import io
import math

import pytest
import torch

import ast_model
from ast_model.eval.analysis import attention_entropy, branch_weights, plot_branch_weights, row_entropy
from ast_model.nn.attention import WindowASSA

TINY = dict(embed_dim=8, depths=(1,) * 9)  # no shifted blocks: every row sees all 64 keys of its window


def test_uniform_rows_have_entropy_log_n_and_scale_does_not_matter() -> None:
    n = 64
    uniform = torch.full((3, 5, n), 1.0 / n)
    ent, valid = row_entropy(uniform)
    assert valid.all()
    torch.testing.assert_close(ent, torch.full((3, 5), math.log(n), dtype=torch.float64))
    torch.testing.assert_close(row_entropy(uniform * 7.5)[0], ent)  # unnormalised rows are normalised first
    one_hot = torch.zeros(2, n)
    one_hot[:, 3] = 0.2
    assert torch.equal(row_entropy(one_hot)[0], torch.zeros(2, dtype=torch.float64))
    half = torch.zeros(1, n)
    half[0, :32] = 1.0
    assert row_entropy(half)[0].item() == pytest.approx(math.log(32))
    ent, valid = row_entropy(torch.zeros(1, 4, n))
    assert not valid.any() and torch.equal(ent, torch.zeros(1, 4, dtype=torch.float64))


def _constant_scores(model: torch.nn.Module) -> torch.nn.Module:
    """Zero q (and the position bias): every score S is 0, so softmax rows are uniform over the window."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.qkv.to_q.weight.zero_()
                m.qkv.to_q.bias.zero_()
                m.relative_position_bias_table.zero_()
    return model


@pytest.mark.parametrize("attention", ["window_softmax", "assa"])
def test_uniform_attention_over_n_keys_gives_log_n(attention: str) -> None:
    """DSA with S = 0 is uniform over the 64 keys of a window; ASSA too (0.5/64 + 0.5 relu(0)^2)."""
    model = _constant_scores(ast_model.create_model("ast_t", **TINY, attention=attention))
    result = attention_entropy(model, [torch.rand(1, 3, 40, 70)])
    assert result.value == pytest.approx(math.log(64), abs=1e-9)
    assert set(result.per_layer) == {"conv.blocks.0.attn"} | {f"decoderlayer_{k}.blocks.0.attn" for k in range(4)}
    assert result.empty_rows == 0 and result.rows > 0
    assert model.training  # the mode it came in


def test_ssa_rows_with_no_positive_score_are_empty_and_left_out() -> None:
    model = _constant_scores(ast_model.create_model("ast_t", **TINY, attention="window_relu2"))
    result = attention_entropy(model, [torch.rand(1, 3, 32, 32)])
    assert result.rows == 0 and result.empty_fraction == 1.0 and math.isnan(result.value)


def test_entropy_is_the_mean_over_layers_of_head_means_of_row_entropies() -> None:
    """Eq. 9's averaging, recomputed from the attention matrices of a perturbed SSA model (shifted
    windows included: the last decoder level has a shifted second block)."""
    torch.manual_seed(0)
    depths = (1, 1, 1, 2, 1, 1, 1, 1, 2)
    model = ast_model.create_model("ast_t", embed_dim=8, depths=depths, attention="window_relu2").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    captured: dict[str, list] = {}

    def keep_inputs(name: str):
        return lambda mod, args, kwargs: captured.setdefault(name, []).append(args)

    hooks = [
        m.register_forward_pre_hook(keep_inputs(name), with_kwargs=True)
        for name, m in model.named_modules()
        if name.endswith(".attn")
    ]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    layer_means = []
    for name, calls in captured.items():
        ((win, mask),) = calls
        a = dict(model.named_modules())[name].attention_matrix(win, mask)  # (B*nW, h, N, N)
        p = a / a.sum(-1, keepdim=True)
        ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (B*nW, h, N); NaN where the row is empty
        ok = ~ent.isnan()
        heads = [ent[:, i][ok[:, i]].double().mean() for i in range(ent.shape[1]) if ok[:, i].any()]
        layer_means.append(torch.stack(heads).mean())
    result = attention_entropy(model, [x])
    assert len(layer_means) == 6 and 0 < result.value < math.log(64)
    assert result.value == pytest.approx(torch.stack(layer_means).mean().item(), rel=1e-4)


def test_entropy_needs_window_attention() -> None:
    with pytest.raises(ValueError, match="window attention"):
        attention_entropy(ast_model.create_model("ast_t", **TINY, attention="channel_softmax"), [])


def test_branch_weights_per_layer_and_plot() -> None:
    model = ast_model.create_model("ast_t")
    weights = branch_weights(model)
    levels = ("bn", "dec0", "dec1", "dec2", "dec3")
    assert [w.label for w in weights] == [f"{level}.{i}" for level in levels for i in (0, 1)]
    assert all(w.dense == 0.5 and w.sparse == 0.5 for w in weights)  # Eq. 7 with a = (1, 1) at init
    with torch.no_grad():
        model.decoderlayer_3.blocks[1].attn.w.copy_(torch.tensor([0.0, math.log(3.0)]))
    last = branch_weights(model)[-1]
    assert last.layer == "decoderlayer_3.blocks.1.attn"
    assert (last.dense, last.sparse) == (pytest.approx(0.25), pytest.approx(0.75))
    fig = plot_branch_weights(branch_weights(model), title="AST-T, init")
    ax = fig.axes[0]
    assert len(ax.containers) == 2 and [t.get_text() for t in ax.get_xticklabels()][-1] == "dec3.1"
    assert ax.containers[1].patches[-1].get_height() == pytest.approx(0.75)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="ASSA"):
        branch_weights(ast_model.create_model("ast_t", **TINY, attention="window_softmax"))
    assert isinstance(model.conv.blocks[0].attn, WindowASSA)
