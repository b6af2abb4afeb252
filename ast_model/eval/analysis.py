"""Analyses of trained AST models behind the paper's Table 6 and Figure 4.

- :func:`attention_entropy`: the attention entropy of Eq. 9 (paper Sec. 4.5), for models whose
  attention is a window attention: DSA (``attention="window_softmax"``), SSA (``"window_relu2"``), ASSA
  (``"assa"``) and the other window activations.
- :func:`branch_weights` / :func:`plot_branch_weights`: the learned dense / sparse branch weights of
  every ASSA layer (Eq. 7; Figure 4).

Normalisation for the entropy. Eq. 9 is the Shannon entropy of attention rows, but only the softmax
rows are distributions: SSA's ``relu(S)^2`` rows and ASSA's mix ``w0 softmax(S) + w1 relu(S)^2`` do not
sum to 1 (and may sum to 0). Each row ``a`` of the attention matrix the model actually applies is
therefore divided by its sum, ``p = a / sum_j a_j``, and its entropy is ``-sum_j p_j log p_j``: the
entropy of where the row puts its weight, whatever the total. The scale of a row (what normalising
removes) does not change which keys it attends to, which is what Eq. 9 is meant to measure
(concentration). A row with zero sum (every score negative, or masked) attends to nothing and has no
distribution: it is left out of the mean and counted in ``empty_rows``. Softmax rows are unchanged by
the normalisation, so DSA is computed exactly as Eq. 9 states; a uniform row over N keys gives log N.

Averaging. Eq. 9 averages over heads h and layers l and sums over query i and key j; the paper's values
(DSA 3.733 with N = 64 keys per window, below log 64 = 4.159) are per-query entropies, so queries (and
windows and images) are averaged and keys summed. The result is the mean over layers of the mean over
heads of the mean over rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ast_model.nn.attention import WindowASSA, WindowAttentionBase

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def row_entropy(attn: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (nats) of every row of an attention matrix after dividing the row by its sum.

    Args:
        attn: ``(..., N_query, N_key)`` non-negative attention weights (normalised or not).
        eps: rows whose sum is at most ``eps`` count as empty.

    Returns:
        ``(entropy, valid)``: both ``(..., N_query)``; ``entropy`` is 0 where ``valid`` is False.
    """
    a = attn.double().clamp_min(0)  # ACON / StarReLU may give negative weights: no probability there
    total = a.sum(dim=-1, keepdim=True)  # (..., Nq, 1)
    valid = total.squeeze(-1) > eps
    p = a / total.clamp_min(eps)
    ent = -torch.special.xlogy(p, p).sum(dim=-1)  # 0 log 0 = 0
    return torch.where(valid, ent, torch.zeros_like(ent)), valid


@dataclass
class AttentionEntropy:
    """Eq. 9 attention entropy of a model (nats).

    Attributes:
        value: mean over layers of the per-layer values.
        per_layer: layer name -> mean over heads of the mean row entropy.
        rows: attention rows that entered the mean (over all layers, heads, windows, images).
        empty_rows: rows with zero sum, left out (see the module docstring).
    """

    value: float
    per_layer: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    empty_rows: int = 0

    @property
    def empty_fraction(self) -> float:
        """Share of the rows that were empty."""
        total = self.rows + self.empty_rows
        return self.empty_rows / total if total else 0.0


def _window_attentions(model: nn.Module) -> list[tuple[str, WindowAttentionBase]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WindowAttentionBase)]


@torch.no_grad()
def attention_entropy(model: nn.Module, images: Iterable[torch.Tensor]) -> AttentionEntropy:
    """Eq. 9 attention entropy of ``model`` on ``images`` (module docstring: normalisation, averaging).

    Args:
        model: an AST whose attention is a window attention (``"assa"``, ``"window_softmax"``,
            ``"window_relu2"``, ...); it is run in eval mode and left in the mode it came in.
        images: batches ``(B, 3, H, W)`` (any size: the model pads them as in inference).

    Returns:
        The entropy, per layer too.

    Raises:
        ValueError: the model has no window attention (e.g. a channel-attention variant).
    """
    layers = _window_attentions(model)
    if not layers:
        raise ValueError(
            "attention_entropy needs a model with window attention (assa, window_softmax, window_relu2, ...)"
        )
    sums = {name: torch.zeros(m.num_heads, dtype=torch.float64) for name, m in layers}
    counts = {name: torch.zeros(m.num_heads, dtype=torch.float64) for name, m in layers}
    empty = 0

    def hook(name: str) -> Callable[[WindowAttentionBase, tuple, dict], None]:
        def record(mod: WindowAttentionBase, args: tuple, kwargs: dict) -> None:
            nonlocal empty
            x = args[0]
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            ent, valid = row_entropy(mod.attention_matrix(x, mask))  # (B*nW, h, N)
            sums[name] += ent.sum(dim=(0, 2)).cpu()
            counts[name] += valid.sum(dim=(0, 2)).double().cpu()
            empty += int((~valid).sum())

        return record

    handles = [m.register_forward_pre_hook(hook(name), with_kwargs=True) for name, m in layers]
    was_training = model.training
    try:
        model.eval()
        for batch in images:
            model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_layer = {}
    for name, _ in layers:
        heads = sums[name] / counts[name].clamp_min(1)
        per_layer[name] = float(heads[counts[name] > 0].mean()) if (counts[name] > 0).any() else math.nan
    finite = [v for v in per_layer.values() if not math.isnan(v)]
    value = sum(finite) / len(finite) if finite else math.nan
    rows = int(sum(c.sum() for c in counts.values()))
    return AttentionEntropy(value=value, per_layer=per_layer, rows=rows, empty_rows=empty)


@dataclass(frozen=True)
class BranchWeight:
    """The normalised branch weights (Eq. 7) of one ASSA layer.

    Attributes:
        layer: module path, e.g. ``"decoderlayer_0.blocks.1.attn"``.
        label: short label, e.g. ``"dec0.1"`` (``"bn.0"`` for the bottleneck).
        dense: weight of the softmax branch (DSA).
        sparse: weight of the squared-ReLU branch (SSA); ``dense + sparse = 1``.
    """

    layer: str
    label: str
    dense: float
    sparse: float


def _short_label(name: str) -> str:
    m = re.match(r"(conv|decoderlayer_(\d))\.blocks\.(\d+)\.attn$", name)
    if not m:
        return name
    level = "bn" if m.group(1) == "conv" else f"dec{m.group(2)}"
    return f"{level}.{m.group(3)}"


def branch_weights(model: nn.Module) -> list[BranchWeight]:
    """``softmax(w)`` of every ASSA layer, in network order (bottleneck, then decoder levels 0-3).

    Raises:
        ValueError: the model has no ASSA layer.
    """
    out = []
    for name, m in model.named_modules():
        if isinstance(m, WindowASSA):
            dense, sparse = torch.softmax(m.w.detach().double().cpu(), dim=0).tolist()
            out.append(BranchWeight(name, _short_label(name), dense, sparse))
    if not out:
        raise ValueError("branch_weights needs an ASSA model (attention='assa')")
    return out


def plot_branch_weights(weights: Sequence[BranchWeight], title: str = "") -> Figure:
    """Figure 4: dense and sparse branch weights per ASSA layer, as grouped bars.

    Returns a bare ``matplotlib.figure.Figure`` (no pyplot, no global state); save it with
    ``fig.savefig(...)``. Needs matplotlib.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.55 * len(weights) + 1.5), 3.2), constrained_layout=True)
    ax = fig.subplots()
    xs = range(len(weights))
    ax.bar([x - 0.2 for x in xs], [w.dense for w in weights], width=0.4, label="dense (softmax)")
    ax.bar([x + 0.2 for x in xs], [w.sparse for w in weights], width=0.4, label="sparse (ReLU$^2$)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(list(xs), [w.label for w in weights], rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("branch weight (softmax of w)")
    ax.set_xlabel("ASSA layer, in network order (bottleneck, decoder levels 0-3)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig
