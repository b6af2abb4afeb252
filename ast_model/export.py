"""ONNX export of an AST model: any batch, height and width, the padding and crop inside the graph.

The exported graph does what :meth:`ast_model.nn.ast.AST.forward` does: pad the bottom and right edges up
to the next multiple of ``pad_multiple`` (128 for the official window 8) with the model's ``pad_mode``, run
the network, crop back to ``H x W``. So an ``(B, 3, H, W)`` float32 input in [0, 1] gives ``(B, 3, H, W)``
for any ``B, H, W >= 1``, like the PyTorch model.

Exporter and opset (see docs/deploy.md): the ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, the default and the maintained one in torch 2.13; the TorchScript-based exporter is
deprecated there) at opset 18, the opset that exporter targets natively (no version conversion pass) and
that onnxruntime >= 1.14 runs. The network is traced with its ``reference`` implementation (plain aten
ops): the ``fast`` path's hand-written autograd functions and fused oneDNN kernels have no ONNX form.
Both implementations compute the same function (tests compare them).

Two things make the shapes symbolic instead of traced constants:

- The padded side is written as ``ceil(H / m) * m`` (a multiple of ``m`` by construction), so every size
  inside the network (windows, 4 downsamplings, the skip concatenations) is a provable multiple and the
  exporter needs no guard on ``H`` or ``W``.
- The padding is a gather with index vectors computed in the graph, not ``F.pad`` behind Python ``if``\\ s:
  reflection falls back to replication when a pad is wider than the image (``AST._pad``), and that choice
  must be made per input at run time, as a tensor, not once at export time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ast_model.data.files import atomic_write_bytes
from ast_model.nn.ast import AST

__all__ = [
    "INPUT_NAME",
    "OPSET",
    "OUTPUT_NAME",
    "PARITY_SHAPES",
    "ExportResult",
    "GraphPadAST",
    "export_onnx",
    "build_parser",
    "main",
    "onnx_parity",
    "read_onnx_metadata",
]

# The opset torch.onnx's torch.export-based exporter emits natively in torch 2.13 (no conversion pass).
OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "restored"
# The shapes of the parity check (issue: one square multiple of 128, one odd size that pads, a batch).
PARITY_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 128, 128), (1, 3, 67, 131), (2, 3, 256, 192))
# Metadata keys written into the .onnx file (read back by the onnxruntime backend).
_META_PREFIX = "ast_pipeline."


def _pad_index(size: torch.Tensor, padded: int, mode: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row (or column) of every padded position along one axis, for one pad mode.

    Args:
        size: the true length as a 0-d int64 tensor (symbolic in the graph).
        padded: the padded length (a symbolic int under export).
        mode: ``"reflect"``, ``"replicate"`` or ``"zeros"``.
        device: where the index lives.

    Returns:
        ``(index, valid)``: int64 ``(padded,)`` indices into ``[0, size)``, and for ``"reflect"`` a 0-d
        bool that is False when the reflection would leave the image (pad >= size); for ``"zeros"``
        a ``(padded,)`` float mask that zeroes the padding.
    """
    i = torch.arange(padded, device=device)  # (P,)
    last = size - 1
    if mode == "reflect":
        reflected = torch.where(i <= last, i, 2 * last - i)  # F.pad reflect: ..., n-2, n-1, n-2, ...
        return reflected.clamp(min=0), reflected.min() >= 0
    clamped = torch.minimum(i, last)  # replicate: the last row repeats
    if mode == "zeros":
        return clamped, (i <= last).float()
    return clamped, torch.ones((), dtype=torch.bool, device=device)


class GraphPadAST(nn.Module):
    """An :class:`AST` whose padding and crop are tensor operations (exportable with dynamic shapes).

    Same function as ``AST.forward`` (the caller's model is not modified: a copy runs the reference
    implementation). Only for inference and export; train the :class:`AST` itself.

    Args:
        model: the model to wrap (copied; eval mode, reference implementation).
    """

    def __init__(self, model: AST) -> None:
        super().__init__()
        net = copy.deepcopy(model).cpu().eval()
        net.set_impl("reference")
        net._compiled = None  # a compiled graph cannot be exported; the eager network is the same function
        self.net = net
        self.multiple = model.pad_multiple
        self.mode = model.config.pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 3, H, W)`` for any ``B, H, W >= 1``."""
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        hp, wp = (h + m - 1) // m * m, (w + m - 1) // m * m  # multiples of m by construction (see module doc)
        hs, ws = _as_tensor(h, x.device), _as_tensor(w, x.device)
        iy, vy = _pad_index(hs, hp, self.mode, x.device)  # (Hp,)
        ix, vx = _pad_index(ws, wp, self.mode, x.device)  # (Wp,)
        if self.mode == "reflect":
            # AST._pad: if either pad is wider than its side, both axes replicate instead of reflecting.
            both = vy & vx
            iy = torch.where(both, iy, torch.minimum(torch.arange(hp, device=x.device), hs - 1))
            ix = torch.where(both, ix, torch.minimum(torch.arange(wp, device=x.device), ws - 1))
        xp = x.index_select(2, iy).index_select(3, ix)  # (B, 3, Hp, Wp)
        if self.mode == "zeros":
            xp = xp * (vy[:, None] * vx[None, :])
        y = self.net._restore_padded(xp)  # (B, 3, Hp, Wp)
        return y[..., :h, :w]


def _as_tensor(n: int | torch.SymInt, device: torch.device) -> torch.Tensor:
    """A 0-d int64 tensor of a (possibly symbolic) size."""
    # torch's stubs allow only Python numbers; a SymInt is what the exporter passes while tracing.
    return torch.scalar_tensor(n, dtype=torch.int64, device=device)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file (weights inside; one file).
        opset: the ai.onnx opset of the graph.
        parity: ``{"1x3x128x128": max abs diff, ...}`` of onnxruntime against the PyTorch model (fp32), per
            shape of ``PARITY_SHAPES``; empty when the check was skipped.
        seconds: wall time of the export (without the parity check).
    """

    path: Path
    opset: int
    parity: dict[str, float]
    seconds: float

    @property
    def max_abs_diff(self) -> float | None:
        """The largest difference over the checked shapes (None: not checked)."""
        return max(self.parity.values()) if self.parity else None


def _export_program(wrapped: GraphPadAST, opset: int) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(dynamo=True)`` with dynamic batch, height and width."""
    import torch.fx.experimental._config as fx_config

    # Example: 2 images whose sides pad to 2 multiples each. A dimension of size 1 in the example (batch 1,
    # one window row at the bottleneck) is specialised by the tracer (the graph would then only accept 1).
    m = wrapped.multiple
    example = torch.rand(2, 3, m + 3, m + 5)
    dims = {
        0: torch.export.Dim("batch", min=1, max=4096),
        2: torch.export.Dim("height", min=1, max=1 << 16),
        3: torch.export.Dim("width", min=1, max=1 << 16),
    }
    # Size-oblivious reasoning: sizes are not assumed to be 0 or 1 when shapes decide between code paths
    # (broadcast, contiguity), so a 1-pixel-wide or single-image input takes the same graph as any other.
    # (torch's config modules generate `patch` at run time: the stubs do not declare it)
    with fx_config.patch(backed_size_oblivious=True), torch.no_grad():  # type: ignore[attr-defined]
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": dims},
            external_data=False,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program (None is the legacy exporter's)
    return program


def _set_metadata(program: torch.onnx.ONNXProgram, meta: dict[str, str]) -> None:
    """Key/value strings in the model's ``metadata_props`` (read back by :func:`read_onnx_metadata`)."""
    props = program.model.metadata_props
    for key, value in meta.items():
        props[_META_PREFIX + key] = value


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``ast_pipeline.*`` metadata of an exported file (variant, pad multiple, parity, ...), prefix removed.

    Reads only the model header with the ``onnx`` package (weights are not loaded into memory twice).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(_META_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(_META_PREFIX)}


def onnx_parity(
    model: AST,
    onnx_path: str | Path,
    shapes: Sequence[tuple[int, int, int, int]] = PARITY_SHAPES,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Max abs difference between onnxruntime and the PyTorch model (its default fast path) per shape.

    Args:
        model: the PyTorch model the file was exported from.
        onnx_path: the exported file.
        shapes: ``(B, 3, H, W)`` inputs (uniform random in [0, 1], seeded).
        seed: the random inputs' seed.

    Returns:
        ``{"BxCxHxW": max abs diff}`` in float32.
    """
    from ast_model.eval.onnx_backend import OnnxRestorer

    session = OnnxRestorer(onnx_path)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    model = model.cpu().eval()
    for shape in shapes:
        x = torch.rand(shape, generator=gen)  # (B, 3, H, W)
        with torch.inference_mode():
            expected = model(x)
        got = session(x)
        out["x".join(map(str, shape))] = float((got - expected).abs().max())
    return out


def export_onnx(
    model: AST,
    path: str | Path,
    *,
    opset: int = OPSET,
    check: bool = True,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to one ``.onnx`` file (weights inside), written atomically.

    Input ``image``: ``(B, 3, H, W)`` float32 RGB in [0, 1], any ``B, H, W >= 1``; output ``restored``: the
    same shape (not clamped, as the PyTorch model). The file's metadata names the variant, the padding
    multiple, the opset and (with ``check``) the parity figures.

    Args:
        model: an :class:`AST` (any implementation, compiled or not; it is not modified).
        path: the ``.onnx`` file to write.
        opset: the ai.onnx opset (default :data:`OPSET`).
        check: run onnxruntime on :data:`PARITY_SHAPES` and record the max abs difference to PyTorch.
        metadata: extra strings stored in the file (e.g. the registered model name and version).

    Returns:
        The :class:`ExportResult`.

    Raises:
        TypeError: ``model`` is not an :class:`AST`.
        RuntimeError: the exporter failed (its message says where in the network).
    """
    if not isinstance(model, AST):
        raise TypeError(f"expected an ast_model AST, got {type(model).__name__}")
    path = Path(path)
    start = time.perf_counter()
    wrapped = GraphPadAST(model).eval()
    program = _export_program(wrapped, opset)
    seconds = time.perf_counter() - start
    meta = {
        "variant": str(getattr(model, "variant", None)),
        "pad_multiple": str(model.pad_multiple),
        "pad_mode": model.config.pad_mode,
        "opset": str(opset),
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        "config": repr(model.config.to_dict()),
        **(metadata or {}),
    }
    _set_metadata(program, meta)
    buffer = io.BytesIO()
    # One file: the weights are inside (no external data; AST-B is ~260 MB < 2 GB). save() writes to any
    # binary file object (onnx.save_model underneath); its stub names paths only.
    program.save(buffer)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())
    del buffer
    parity: dict[str, float] = {}
    if check:
        parity = onnx_parity(model, path)
        _set_metadata(program, {"parity_max_abs_diff": repr(max(parity.values())), "parity": repr(parity)})
        buffer = io.BytesIO()
        program.save(buffer)  # type: ignore[arg-type]
        atomic_write_bytes(path, buffer.getvalue())
    return ExportResult(path=path, opset=opset, parity=parity, seconds=seconds)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
ModelLoader = Callable[[str, "str | None"], nn.Module]


def build_parser() -> argparse.ArgumentParser:
    """The ``ast-export`` argument parser."""
    from ast_model.nn.variants import list_models

    parser = argparse.ArgumentParser(
        prog="ast-export",
        description="Export an AST model to ONNX: dynamic batch, height and width, padding and crop inside the "
        "graph, checked against PyTorch with onnxruntime.",
    )
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--model",
        required=True,
        help=f"a variant ({', '.join(list_models())}) with --weights, a project checkpoint, an official .pth, a "
        "folder holding a checkpoint (MLflow URIs: through the pipelines' ast-export entry point)",
    )
    parser.add_argument("--weights", help="weights for a variant name: project checkpoint or official .pth")
    parser.add_argument("--opset", type=int, default=OPSET, help="ai.onnx opset (default: %(default)s)")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help=f"skip the onnxruntime parity check at {', '.join('x'.join(map(str, s)) for s in PARITY_SHAPES)}",
    )
    parser.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    return parser


def main(argv: Sequence[str] | None = None, *, load: ModelLoader | None = None) -> int:
    """Run ``ast-export``.

    Args:
        argv: arguments without the program name; ``None``: ``sys.argv[1:]``.
        load: resolves ``--model``/``--weights`` to a model (default :func:`ast_model.cli.load_model`;
            the pipelines' entry point passes one that also resolves MLflow URIs).

    Returns:
        0 when the file was written (and, unless ``--no-check``, its parity checked), 2 for a problem to fix.
    """
    from ast_model.cli import load_model
    from ast_model.preflight import output_file_problem

    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        parser.error(f"output {out}: name it <something>.onnx")
    problem = output_file_problem(out, "output file")
    if problem is not None:
        print(f"ast-export: {problem}", file=sys.stderr)
        return 2
    try:
        model = (load or load_model)(args.model, args.weights)
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"ast-export: cannot load the model: {exc}", file=sys.stderr)
        return 2
    if not isinstance(model, AST):
        print(f"ast-export: {args.model} is not an AST model ({type(model).__name__})", file=sys.stderr)
        return 2
    print(
        f"ast-export: exporting {getattr(model, 'variant', 'AST')} (opset {args.opset}) ...",
        file=sys.stderr,
        flush=True,
    )
    result = export_onnx(model, out, opset=args.opset, check=not args.no_check, metadata={"source": args.model})
    size = out.stat().st_size / 1e6
    line = f"ast-export: wrote {out} ({size:.1f} MB, export {result.seconds:.0f} s)"
    if result.parity:
        line += "; onnxruntime vs PyTorch max abs diff " + ", ".join(f"{k}: {v:.2e}" for k, v in result.parity.items())
    print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
