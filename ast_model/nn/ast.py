"""The U-shaped AST network (paper Sec. 3.1, Fig. 2; docs/model.md#network), for any input size.

Padding: the network needs both sides to be multiples of ``16 * win_size`` (four 2x downsamplings, then
``win x win`` windows in the bottleneck): 128 with the official window 8. The model pads the bottom and
right edges up to the next multiple (``pad_mode``: "reflect" by default, falling back to "replicate" when
the pad is wider than the image; "zeros" matches the official test script's zero fill), runs, and crops
back, so ``B x 3 x H x W`` in gives ``B x 3 x H x W`` out for any ``H, W >= 1``. Sides that are already
multiples are not padded, so the output there equals the official model's (built at img_size 128).
Unlike the official code nothing is square-only: feature maps keep their true ``H x W``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ast_model.nn.blocks import Level
from ast_model.nn.windows import to_features, to_image

PAD_MODES = ("reflect", "replicate", "zeros")


@dataclass
class ASTConfig:
    """Hyper-parameters of an AST network (defaults = the official ``AST()`` defaults).

    ``bottleneck_shift`` reproduces a model built at img_size >= 256 (the second bottleneck block
    shifts its windows); the default False is the official test configuration (built at 128).

    ``attention`` and ``ffn`` name a registered attention / feed-forward (the paper's ablations,
    ``docs/ablations.md``); ``frfn_enhance``, ``frfn_ease``, ``frfn_dwconv`` are FRFN's switches (Table 9),
    all True for the official FRFN and only valid with ``ffn="frfn"``.
    """

    embed_dim: int = 32
    depths: tuple[int, ...] = (2, 2, 2, 2, 2, 2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 4, 8, 16, 16, 8, 4, 2)
    in_chans: int = 3
    out_chans: int = 3
    win_size: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    attention: str = "assa"
    ffn: str = "frfn"
    frfn_enhance: bool = True
    frfn_ease: bool = True
    frfn_dwconv: bool = True
    bottleneck_shift: bool = False
    pad_mode: str = "reflect"

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        self.num_heads = tuple(self.num_heads)
        if len(self.depths) != 9 or len(self.num_heads) != 9:
            raise ValueError("depths and num_heads need 9 entries (enc0..enc3, bottleneck, dec0..dec3)")
        if sum(self.depths[5:]) != sum(self.depths[:4]):
            # The decoder's stochastic-depth rates are the encoder's reversed (official schedule): a
            # different total would silently drop decoder blocks.
            raise ValueError(
                f"depths {list(self.depths)}: the decoder levels must have as many blocks as the encoder levels"
            )
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode {self.pad_mode!r} is not one of {PAD_MODES}")
        if self.ffn != "frfn" and not (self.frfn_enhance and self.frfn_ease and self.frfn_dwconv):
            raise ValueError(f"frfn_enhance / frfn_ease / frfn_dwconv switch FRFN only; ffn is {self.ffn!r}")

    @property
    def ffn_options(self) -> dict:
        """Keyword arguments of the feed-forward beyond dim and hidden_dim (FRFN's switches)."""
        if self.ffn != "frfn":
            return {}
        return dict(enhance=self.frfn_enhance, ease=self.frfn_ease, dwconv=self.frfn_dwconv)

    def to_dict(self) -> dict:
        """Plain dict (lists, not tuples) for checkpoints and logging."""
        d = dataclasses.asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d


def drop_path_rates(depths: tuple[int, ...], rate: float) -> list[list[float]]:
    """Per-block stochastic depth for the 9 levels, as the official code sets it (docs/model.md#stochastic-depth).

    Encoder: ``linspace(0, rate, sum(depths[:4]))`` sliced per level; bottleneck: ``rate`` everywhere;
    decoder: the encoder list reversed, sliced per level.
    """
    enc = torch.linspace(0, rate, sum(depths[:4]), device="cpu").tolist()  # cpu: also under a meta default device
    dec = enc[::-1]
    out, i, j = [], 0, 0
    for k, d in enumerate(depths):
        if k < 4:
            out.append(enc[i : i + d])
            i += d
        elif k == 4:
            out.append([rate] * d)
        else:
            out.append(dec[j : j + d])
            j += d
    return out


class InputProj(nn.Module):
    """3x3 conv + LeakyReLU(0.01): image -> ``(B, H, W, C)`` features."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_chans, dim, 3, 1, 1), nn.LeakyReLU(0.01, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_features(self.proj(x.contiguous(memory_format=torch.channels_last)))


class OutputProj(nn.Module):
    """3x3 conv, no activation: ``(B, H, W, C)`` features -> image."""

    def __init__(self, dim: int, out_chans: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, out_chans, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(to_image(x))


class Downsample(nn.Module):
    """4x4 conv, stride 2: halves H, W and doubles channels (official ``dowsample_*``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(dim_in, dim_out, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_features(self.conv(to_image(x)))


class Upsample(nn.Module):
    """2x2 transposed conv, stride 2: doubles H, W."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(dim_in, dim_out, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_features(self.deconv(to_image(x)))


class AST(nn.Module):
    """Adaptive Sparse Transformer (Zhou et al., CVPR 2024), state-dict compatible with the official code.

    Args:
        config: the hyper-parameters; see :class:`ASTConfig`.
    """

    variant: str | None = None  # the registered variant it was built as (create_model, load_checkpoint)

    def __init__(self, config: ASTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c, win = cfg.embed_dim, cfg.win_size
        dpr = drop_path_rates(cfg.depths, cfg.drop_path_rate)
        common: dict[str, Any] = dict(
            win_size=win,
            mlp_ratio=cfg.mlp_ratio,
            ffn=cfg.ffn,
            qkv_bias=cfg.qkv_bias,
            qk_scale=cfg.qk_scale,
            attn_drop=cfg.attn_drop_rate,
            drop=cfg.drop_rate,
            ffn_options=cfg.ffn_options,
        )

        def shifts(depth: int, shifted: bool = True) -> list[int]:
            return [win // 2 if (i % 2 and shifted) else 0 for i in range(depth)]

        def level(k: int, dim: int, attention: str | None, shifted: bool = True) -> Level:
            return Level(dim, cfg.num_heads[k], dpr[k], shifts(cfg.depths[k], shifted), attention=attention, **common)

        self.input_proj = InputProj(cfg.in_chans, c)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # Encoder: attention-free blocks (paper Sec. 3.1; docs/model.md#blocks), channels C, 2C, 4C, 8C.
        for i in range(4):
            setattr(self, f"encoderlayer_{i}", level(i, c * 2**i, None))
            setattr(self, f"dowsample_{i}", Downsample(c * 2**i, c * 2 ** (i + 1)))
        self.conv = level(4, c * 16, cfg.attention, shifted=cfg.bottleneck_shift)
        # Decoder: up0 halves 16C -> 8C; up1..up3 quarter (the concat doubles the decoder widths).
        ups = [(16 * c, 8 * c), (16 * c, 4 * c), (8 * c, 2 * c), (4 * c, c)]
        for k, (cin, cout) in enumerate(ups):
            setattr(self, f"upsample_{k}", Upsample(cin, cout))
            setattr(self, f"decoderlayer_{k}", level(5 + k, 2 * cout, cfg.attention))
        self.output_proj = OutputProj(2 * c, cfg.out_chans)
        self._compiled: tuple[int, Callable[[torch.Tensor], torch.Tensor], bool] | None = None  # compile_network
        self.apply(_init_weights)

    @property
    def pad_multiple(self) -> int:
        """Both sides are padded to a multiple of this (``16 * win_size``)."""
        return 16 * self.config.win_size

    def set_impl(self, impl: str) -> AST:
        """Choose ``"fast"`` (default) or ``"reference"`` (spec-literal) attention and feed-forward code."""
        if impl not in ("fast", "reference"):
            raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
        for m in self.modules():
            if hasattr(m, "impl"):
                setattr(m, "impl", impl)  # noqa: B010 (a duck-typed attribute of several module classes)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Restore ``x`` ``(B, in_chans, H, W)`` (RGB in [0, 1] for official weights) -> ``(B, out_chans, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected input (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        xp = self._pad(x)
        compiled = self._compiled
        if compiled is not None and compiled[0] == id(self) and (self.training or compiled[2]):
            y = compiled[1](xp)
        else:
            y = self._restore_padded(xp)
        return y[..., :h, :w].contiguous()

    def _restore_padded(self, xp: torch.Tensor) -> torch.Tensor:
        """The network on an already padded ``(B, in_chans, H, W)`` input (the region ``compile`` compiles)."""
        y = self.output_proj(self._features(xp))
        if self.config.in_chans == 3 and self.config.out_chans == 3:
            y = xp + y  # global residual (dd_in == 3)
        return y

    def compile_network(
        self, *, backend: str = "inductor", mode: str | None = None, fullgraph: bool = True, inference: bool = True
    ) -> AST:
        """Compile the network with ``torch.compile`` (opt-in; eager stays the default).

        The compiled region is everything after the padding, with static shapes: one compilation per
        padded input shape (and per train/eval mode, autocast state, dtype), so every input size that pads
        to the same multiple of 128 reuses it, and a progressive-training phase compiles once for its patch size. The
        whole network is one graph (``fullgraph=True``: no graph breaks, no host syncs), so blocks do not
        recompile one by one. Compilation costs tens of seconds to minutes per shape (README, "Precision,
        compile"); it pays off on long runs and on GPUs.

        Weights, state dict keys and checkpoints are unchanged (the module is not wrapped). A deep copy
        of the model (e.g. :func:`ast_model.count_macs`) runs eagerly.

        Args:
            backend: ``torch.compile`` backend ("inductor"; "aot_eager" traces without generating code).
            mode: ``torch.compile`` mode (None, "max-autotune", "reduce-overhead", ...).
            fullgraph: fail on a graph break instead of splitting the graph.
            inference: also use the compiled network in eval mode. Training passes False: validation
                images come in many sizes and run rarely, so compiling each size would cost more than it saves.

        Returns:
            ``self``.
        """
        fn = torch.compile(self._restore_padded, backend=backend, mode=mode, fullgraph=fullgraph, dynamic=False)
        # Keyed by id: a deep copy shares this attribute but must not call the original's compiled graph.
        self._compiled = (id(self), fn, inference)
        return self

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph == 0 and pw == 0:
            return x
        mode = self.config.pad_mode
        if mode == "zeros":
            return F.pad(x, (0, pw, 0, ph))
        if mode == "reflect" and (ph >= h or pw >= w):
            mode = "replicate"  # reflection needs the image to be wider than the pad
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pos_drop(self.input_proj(x))  # (B, H, W, C)
        skips = []
        for i in range(4):
            y = getattr(self, f"encoderlayer_{i}")(y)
            skips.append(y)
            y = getattr(self, f"dowsample_{i}")(y)  # (B, H/2, W/2, 2C)
        y = self.conv(y)
        for k in range(4):
            y = getattr(self, f"upsample_{k}")(y)
            y = torch.cat((y, skips[3 - k]), dim=-1)  # upsampled first, then the skip
            y = getattr(self, f"decoderlayer_{k}")(y)
        return y  # (B, H, W, 2C)


def _init_weights(m: nn.Module) -> None:
    """Official init: Linear trunc-normal(0.02) + zero bias, LayerNorm (1, 0); convs keep torch defaults."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
