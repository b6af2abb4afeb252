"""``torch.compile`` of the fast path (issue 10, item 3): no graph breaks, no recompiles, eager results.

Most tests use the ``aot_eager`` backend: it runs dynamo (graph capture, ``fullgraph=True`` fails on any
graph break or host sync such as ``.item()`` / ``.tolist()``) and AOTAutograd (the joint forward/backward
graph, through our custom autograd functions) without generating C++ code, so it takes seconds on CPU.
One slow test runs inductor, which generates and compiles C++ (minutes on 2 busy cores).
"""

from __future__ import annotations

import copy

import pytest
import torch

import ast_model
from ast_model.nn.blocks import TransformerBlock
from ast_model.nn.windows import shift_attention_mask


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test starts without compiled code from the others (recompile counts are per code object)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(module: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**{n: p.grad.clone() for n, p in module.named_parameters()}, "input": x.grad.clone()}


def _block_run(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None, autocast: bool):
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = block(x, mask)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach().float(), _grads(block, x)


@pytest.mark.parametrize("attention,shift", [("assa", 2), ("assa", 0), (None, 0)], ids=["shifted", "plain", "ffn-only"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_block_compiles_fullgraph_and_matches_eager(attention: str | None, shift: int, autocast: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(32, 2, win_size=4, shift_size=shift, attention=attention).train()
    x = torch.randn(2, 16, 16, 32)
    mask = shift_attention_mask(16, 16, 4, shift) if shift else None
    want, want_grads = _block_run(block, x, mask, autocast)
    block.compile(fullgraph=True, backend="aot_eager")  # in place: same parameter names
    got, got_grads = _block_run(block, x, mask, autocast)
    tol = 1e-6 if not autocast else 1e-2  # aot_eager runs the same kernels; bf16 allows reordering noise
    assert (got - want).abs().max() <= tol * want.abs().max()
    for name, g in want_grads.items():
        assert (got_grads[name].float() - g.float()).abs().max() <= tol * g.float().abs().max().clamp_min(1e-12), name


def test_blocks_with_different_drop_path_rates_share_one_compilation() -> None:
    """Every block has its own stochastic-depth rate; none of them may trigger a recompile (issue 10)."""
    torch.manual_seed(1)
    blocks = [
        TransformerBlock(16, 2, win_size=4, attention="assa", drop_path=p).train() for p in (0.02, 0.05, 0.1, 0.2)
    ]
    for b in blocks:
        b.compile(fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in blocks:
            x = b(x)
        x.sum().backward()


def test_network_compiles_once_per_padded_shape_and_matches_eager() -> None:
    torch.manual_seed(2)
    model = ast_model.create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4, drop_path_rate=0.0).eval()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 50, 61)  # both pad to 64 x 64
    with torch.no_grad():
        want = [model(a), model(b)]
        model.compile_network(backend="aot_eager")
        got = [model(a)]
        with torch._dynamo.config.patch(error_on_recompile=True):
            got.append(model(b))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and (g - w).abs().max() < 1e-6


def test_compiled_training_matches_eager_gradients() -> None:
    torch.manual_seed(3)
    model = ast_model.create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4, drop_path_rate=0.0).train()
    x = torch.rand(2, 3, 64, 64)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    want = grads()
    model.compile_network(backend="aot_eager")
    got = grads()
    for n, g in want.items():
        assert (got[n] - g).abs().max() <= 1e-5 * g.abs().max(), n


def test_compiled_model_keeps_its_state_dict_and_copies_run_eagerly() -> None:
    model = ast_model.create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4)
    keys = list(model.state_dict())
    model.compile_network(backend="aot_eager")
    assert list(model.state_dict()) == keys  # not wrapped: checkpoints and DeepSpeed see the same module
    clone = copy.deepcopy(model)
    assert clone._compiled is not None and clone._compiled[0] != id(clone)  # the copy does not call our graph
    assert ast_model.count_macs(model, (1, 3, 64, 64)) > 0  # count_macs runs a deep copy on the meta device


def test_training_compile_leaves_eval_mode_eager() -> None:
    """The train stage compiles with inference=False: validation images of any size run eagerly."""
    model = ast_model.create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4).eval()
    model.compile_network(backend="aot_eager", inference=False)
    torch._dynamo.utils.counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for side in (64, 128, 192):  # three padded shapes: would be three compilations if compiled
            model(torch.rand(1, 3, side, side))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


@pytest.mark.slow
def test_block_inductor_fullgraph_matches_eager() -> None:
    """The real backend: generated C++ kernels for a shifted attention block, forward and backward."""
    torch.manual_seed(4)
    block = TransformerBlock(32, 2, win_size=4, shift_size=2).train()
    x = torch.randn(2, 16, 16, 32)
    mask = shift_attention_mask(16, 16, 4, 2)
    want, want_grads = _block_run(block, x, mask, False)
    block.compile(fullgraph=True)
    got, got_grads = _block_run(block, x, mask, False)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for name, g in want_grads.items():
        assert (got_grads[name] - g).abs().max() <= 1e-4 * g.abs().max(), name
