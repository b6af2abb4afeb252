"""Test oracle: the official AST forward pass, re-expressed functionally from docs/model.md.

It shares no code with ``ast_model``: it works on a raw state dict with the official key names (the
block feed-forward is ``mlp.*``; map our keys with ``ast_model.checkpoint.official_key``), keeps the
official square token layout (``H = W = int(sqrt(L))``), takes the per-block window/shift settings from
``official_ast_state_dict_*.json`` (``blocks_img_size_*``), and builds the shift mask per block as the
official code does. Run in float64 it is the ground truth the fast model is compared against.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

DATA = Path(__file__).resolve().parent / "data"  # official state-dict records: docs/model.md#state-dict


def official_json(variant: str) -> dict:
    """The official state-dict description for ``"T"`` or ``"B"`` (docs/model.md#state-dict)."""
    return json.loads((DATA / f"official_ast_state_dict_{variant}.json").read_text())


def _side(L: int) -> int:
    return int(math.sqrt(L))


def _partition(x: torch.Tensor, win: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, win, win, c)


def _reverse(windows: torch.Tensor, win: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / win / win))
    x = windows.view(b, h // win, w // win, win, win, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _shift_mask(h: int, w: int, win: int, shift: int, like: torch.Tensor) -> torch.Tensor:
    img = torch.zeros((1, h, w, 1)).type_as(like)
    cnt = 0
    for hs in (slice(0, -win), slice(-win, -shift), slice(-shift, None)):
        for ws in (slice(0, -win), slice(-win, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = _partition(img, win).view(-1, win * win)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def _attention(sd: Mapping[str, torch.Tensor], p: str, x: torch.Tensor, heads: int, win: int, mask) -> torch.Tensor:
    bw, n, c = x.shape
    q = F.linear(x, sd[p + "qkv.to_q.weight"], sd[p + "qkv.to_q.bias"])
    q = q.reshape(bw, n, 1, heads, c // heads).permute(2, 0, 3, 1, 4)[0]
    kv = F.linear(x, sd[p + "qkv.to_kv.weight"], sd[p + "qkv.to_kv.bias"])
    kv = kv.reshape(bw, n, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    q = q * (c // heads) ** -0.5
    attn = q @ k.transpose(-2, -1)
    table, index = sd[p + "relative_position_bias_table"], sd[p + "relative_position_index"]
    bias = table[index.view(-1)].view(win * win, win * win, -1).permute(2, 0, 1).contiguous()
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(bw // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, heads, n, n)
    a0 = torch.softmax(attn, dim=-1)
    a1 = torch.relu(attn) ** 2
    wts = sd[p + "w"]
    w1 = torch.exp(wts[0]) / torch.sum(torch.exp(wts))
    w2 = torch.exp(wts[1]) / torch.sum(torch.exp(wts))
    attn = a0 * w1 + a1 * w2
    out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
    return F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def _frfn(sd: Mapping[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    b, L, c = x.shape
    hh = _side(L)
    img = x.transpose(1, 2).reshape(b, c, hh, hh)
    c4 = c // 4
    x1, x2 = torch.split(img, [c4, c - c4], dim=1)
    x1 = F.conv2d(x1, sd[p + "partial_conv3.weight"], padding=1)
    x = torch.cat((x1, x2), 1).flatten(2).transpose(1, 2)
    x = F.gelu(F.linear(x, sd[p + "linear1.0.weight"], sd[p + "linear1.0.bias"]))
    a, g = x.chunk(2, dim=-1)
    hid = a.shape[-1]
    a = a.transpose(1, 2).reshape(b, hid, hh, hh)
    a = F.gelu(F.conv2d(a, sd[p + "dwconv.0.weight"], sd[p + "dwconv.0.bias"], padding=1, groups=hid))
    a = a.flatten(2).transpose(1, 2)
    return F.linear(a * g, sd[p + "linear2.0.weight"], sd[p + "linear2.0.bias"])


def _block(sd, p: str, meta: dict, x: torch.Tensor) -> torch.Tensor:
    b, L, c = x.shape
    h = w = _side(L)
    win, shift = meta["win_size"], meta["shift_size"]
    mask = _shift_mask(h, w, win, shift, x) if shift > 0 else None
    if meta["attention"]:
        shortcut = x
        y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"]).view(b, h, w, c)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        yw = _partition(y, win).view(-1, win * win, c)
        yw = _attention(sd, p + "attn.", yw, meta["num_heads"], win, mask)
        y = _reverse(yw.view(-1, win, win, c), win, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + y.reshape(b, h * w, c)
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    return x + _frfn(sd, p + "mlp.", y)


def _to_img(x: torch.Tensor) -> torch.Tensor:
    b, L, c = x.shape
    return x.transpose(1, 2).contiguous().view(b, c, _side(L), _side(L))


def official_forward(sd: Mapping[str, torch.Tensor], blocks: list[dict], x: torch.Tensor) -> torch.Tensor:
    """The official ``AST.forward(x)`` (eval mode) for square inputs whose side is a multiple of 128.

    Args:
        sd: state dict with official key names (no ``module.``).
        blocks: ``blocks_img_size_128`` (or ``_256``) from the official JSON: per-block win/shift/heads.
        x: ``(B, 3, S, S)``.
    """
    by_level: dict[str, list[dict]] = {}
    for meta in blocks:
        level = meta["name"].rsplit(".blocks.", 1)[0]
        by_level.setdefault(level, []).append(meta)

    def level(name: str, y: torch.Tensor) -> torch.Tensor:
        for meta in by_level[name]:
            y = _block(sd, meta["name"] + ".", meta, y)
        return y

    y = F.leaky_relu(F.conv2d(x, sd["input_proj.proj.0.weight"], sd["input_proj.proj.0.bias"], padding=1), 0.01)
    y = y.flatten(2).transpose(1, 2)
    skips = []
    for i in range(4):
        y = level(f"encoderlayer_{i}", y)
        skips.append(y)
        y = F.conv2d(
            _to_img(y), sd[f"dowsample_{i}.conv.0.weight"], sd[f"dowsample_{i}.conv.0.bias"], stride=2, padding=1
        )
        y = y.flatten(2).transpose(1, 2)
    y = level("conv", y)
    for k in range(4):
        y = F.conv_transpose2d(
            _to_img(y), sd[f"upsample_{k}.deconv.0.weight"], sd[f"upsample_{k}.deconv.0.bias"], stride=2
        )
        y = torch.cat([y.flatten(2).transpose(1, 2), skips[3 - k]], -1)
        y = level(f"decoderlayer_{k}", y)
    out = F.conv2d(_to_img(y), sd["output_proj.proj.0.weight"], sd["output_proj.proj.0.bias"], padding=1)
    return x + out
