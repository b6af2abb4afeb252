"""``ast-restore``: restore image files with an AST model.

Examples::

    ast-restore photos/ out/ --model models:/rain-ast@champion
    ast-restore 'shots/*.jpg' one.png out/ --model ast_b --weights AST_B_spad.pth --ensemble
    python -m ast_model.cli big.tif out/ --model models/derain/final.pt --tile 512 --device cuda
    ast-restore photos/ out/ --model rain.onnx --backend onnxruntime

The installed ``ast-restore`` command is :func:`pipelines.model_source.restore_main`: this ``main`` with a
resolver for MLflow URIs (``models:/``, ``runs:/``). ``python -m ast_model.cli`` takes local sources only,
so this library imports no tracking package.

Inputs are files, folders (their image files, not recursive) or glob patterns; every result is written
as ``<output>/<input stem>.png``. A file that cannot be read is named on stderr and skipped; the rest are
restored and the exit status is 1 at the end. Exit status 2: bad arguments, an output folder that cannot
be written (checked before any image is read) or a model that cannot load; one line each (``--debug``:
the traceback). Tiled images show a per-tile progress bar with an ETA.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ast_model.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_official, read_checkpoint
from ast_model.eval.images import IMAGE_SUFFIXES, ImageReadError, read_image, save_png
from ast_model.eval.restore import CPU_AUTO_TILE, RestoreOptions, restore_image
from ast_model.nn.ast import AST
from ast_model.nn.variants import list_models
from ast_model.preflight import output_dir_problem
from ast_model.runtime import cpu_count, resolve_device, set_threads, tune_allocator

__all__ = ["BACKENDS", "Resolver", "build_parser", "collect_inputs", "load_model", "main"]

# A model source with a scheme (``models:/NAME@ALIAS``, ``runs:/ID/PATH``): fetched by a resolver that the
# caller passes in (the pipelines' entry points resolve MLflow URIs); the library itself fetches nothing.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
BACKENDS = ("pytorch", "onnxruntime")
# spec -> a local file or folder, or a ready model.
Resolver = Callable[[str], "str | os.PathLike | nn.Module"]
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def _load_weights_file(path: Path, variant: str | None) -> nn.Module:
    """A project checkpoint (config inside) or an official ``.pth`` (variant given or inferred)."""
    data = read_checkpoint(path)
    if data.get("format") == FORMAT:
        stored = data.get("variant")
        del data  # load_checkpoint reads the file itself; do not hold two copies of the weights
        model = load_checkpoint(path)
        if variant is not None and stored is not None and stored != variant:
            raise CheckpointError(f"{path} holds an {stored} model, not {variant}")
        return model
    return load_official(data, variant=variant)


def _load_from_folder(folder: Path) -> nn.Module:
    """The project checkpoint inside a folder, e.g. an MLflow model downloaded from the registry."""
    found = sorted(p for p in folder.rglob("*") if p.suffix in _CHECKPOINT_SUFFIXES and p.is_file())
    for path in found:
        try:
            if read_checkpoint(path).get("format") == FORMAT:
                return load_checkpoint(path)
        except CheckpointError:
            continue
    raise CheckpointError(f"{folder}: no ast-pipeline checkpoint ({'/'.join(_CHECKPOINT_SUFFIXES)}) inside")


def _is_uri(spec: str) -> bool:
    """``scheme:/...`` (``models:/``, ``runs:/``, ...): a source only a resolver can fetch."""
    return _URI.match(spec) is not None


def _load_onnx(path: Path) -> nn.Module:
    from ast_model.eval.onnx_backend import OnnxRestorer  # onnxruntime is optional: imported on demand

    return OnnxRestorer(path)


def _as_onnx(model: nn.Module) -> nn.Module:
    """The PyTorch model exported to a temporary ``.onnx`` and loaded by onnxruntime (export: minutes)."""
    import tempfile

    from ast_model.export import export_onnx
    from ast_model.nn.ast import AST

    if not isinstance(model, AST):
        raise ValueError(f"--backend onnxruntime needs an AST model or an .onnx file, got {type(model).__name__}")
    print(
        "ast-restore: exporting the model to ONNX for onnxruntime (once; `ast-export` keeps the file)",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="ast-onnx-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", check=False).path
        return _load_onnx(path)  # the session holds the graph in memory: the file may go


def load_model(
    spec: str,
    weights: str | None = None,
    *,
    backend: str = "pytorch",
    resolve: Resolver | None = None,
) -> nn.Module:
    """Resolve the ``--model``/``--weights`` pair to a model on the CPU, in eval mode.

    Args:
        spec: a variant name (``ast_t``, ``ast_b``; needs ``weights``), a project checkpoint, an official
            ``.pth``, an exported ``.onnx`` (onnxruntime backend), a folder holding a project checkpoint (or,
            for onnxruntime, an ``.onnx``), or a URI that ``resolve`` fetches (``models:/NAME@ALIAS``).
        weights: with a variant name: a project checkpoint or an official ``.pth`` of that variant.
        backend: ``"pytorch"`` or ``"onnxruntime"`` (an :class:`ast_model.eval.onnx_backend.OnnxRestorer`;
            a PyTorch source is exported first).
        resolve: turns a URI into a local file or folder, or a ready model (the pipelines' entry points
            pass their MLflow resolver; the library itself fetches nothing).

    Returns:
        The model.

    Raises:
        ValueError: an inconsistent combination, or a spec that is none of the above.
        CheckpointError: a weights file that cannot be read or does not fit.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    source: str | os.PathLike | nn.Module = spec
    if _is_uri(spec):
        if weights:
            raise ValueError("--weights cannot be combined with a model URI")
        if resolve is None:
            raise ValueError(
                f"--model {spec}: URIs are resolved by the installed `ast-restore` / `ast-export` / `ast-demo` "
                "commands (pipelines, with the [pipeline] extra), not by `python -m ast_model.cli`"
            )
        source = resolve(spec)
    if isinstance(source, nn.Module):  # a resolver may hand back a ready model
        return source.cpu().eval() if backend == "pytorch" else _as_onnx(source.cpu().eval())
    if isinstance(source, str) and source in list_models():
        if not weights:
            raise ValueError(f"--model {spec} needs --weights (a project checkpoint or an official .pth)")
        model = _load_weights_file(Path(weights), variant=source)
    else:
        path = Path(source)
        if weights:
            raise ValueError(f"--weights goes with a variant name ({', '.join(list_models())}), not with {spec!r}")
        onnx_files = sorted(path.rglob("*.onnx")) if path.is_dir() else [path] if path.suffix == ".onnx" else []
        if path.suffix == ".onnx" and backend == "pytorch":
            raise ValueError(f"{spec} is an ONNX file: use --backend onnxruntime")
        if backend == "onnxruntime" and onnx_files and onnx_files[0].is_file():
            return _load_onnx(onnx_files[0])
        if path.is_dir():
            model = _load_from_folder(path)
        elif path.is_file():
            model = _load_weights_file(path, variant=None)
        else:
            raise ValueError(
                f"--model {spec!r} is not a variant ({', '.join(list_models())}), an existing checkpoint, "
                ".onnx file or folder, or a model URI (models:/NAME@ALIAS, runs:/RUN_ID/PATH)"
            )
    model = model.cpu().eval()
    return _as_onnx(model) if backend == "onnxruntime" else model


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def collect_inputs(specs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders and glob patterns, in the given order, without duplicates.

    Args:
        specs: paths or patterns as typed (patterns are expanded here, for shells that do not).

    Returns:
        ``(files, missing)``: the files to restore, and the specs that matched nothing.
    """
    files: list[Path] = []
    missing: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        elif glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            found = []
        if not found:
            missing.append(spec)
        files.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, missing


def _output_names(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """``<out>/<stem>.png`` per input; stems that repeat (a.jpg and a.png) get the suffix, then a count."""
    used: set[str] = set()
    names = []
    for path in files:
        name = f"{path.stem}.png"
        if name in used:
            name = f"{path.stem}_{path.suffix.lstrip('.')}.png"
        count = 1
        while name in used:
            count += 1
            name = f"{path.stem}_{count}.png"
        used.add(name)
        names.append(out_dir / name)
    return names


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _tile_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        tile = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a non-negative integer, got {value!r}") from None
    if tile < 0:
        raise argparse.ArgumentTypeError(f"tile must be >= 0, got {tile}")
    return tile


def _workers_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        workers = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}") from None
    if workers < 1:
        raise argparse.ArgumentTypeError(f"workers must be >= 1, got {workers}")
    return workers


def tile_workers(requested: int | str, device: torch.device, backend: str, cores: int) -> int:
    """How many tiles ``ast-restore`` runs at once: ``auto`` is 2 on a CPU with 2+ cores (PyTorch backend;
    each worker then gets ``cores // 2`` threads, see :attr:`RestoreOptions.workers`), else 1."""
    if requested != "auto":
        return int(requested)
    return 2 if device.type == "cpu" and backend == "pytorch" and cores >= 2 else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``ast-restore`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ast-restore",
        description="Restore images (deraining, raindrop removal, dehazing) with an AST model. "
        "Any image size: large images are restored tile by tile.",
        epilog="A file that cannot be read is reported and skipped; the exit status is then 1.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (not recursive) or glob patterns")
    parser.add_argument("output", help="output folder (created); results are written as <stem>.png")
    parser.add_argument(
        "--model",
        required=True,
        help=f"a variant ({', '.join(list_models())}) with --weights, a project checkpoint, an official "
        ".pth, an exported .onnx (--backend onnxruntime), a folder holding a checkpoint, or an MLflow URI "
        "(models:/NAME@ALIAS, runs:/RUN_ID/PATH; with the installed ast-restore command)",
    )
    parser.add_argument("--weights", help="weights for a variant name: project checkpoint or official .pth")
    parser.add_argument(
        "--tile",
        type=_tile_arg,
        default="auto",
        help="tile side in pixels; 'auto' (default): whole image if it fits in memory, else tiles (on the CPU: "
        f"tiles of at most {CPU_AUTO_TILE} px for any larger image, whatever --workers, so memory stays bounded "
        "and the result does not depend on the core count); 0: never tile",
    )
    parser.add_argument("--overlap", type=int, default=64, help="pixels shared by neighbouring tiles (default 64)")
    parser.add_argument(
        "--blend",
        choices=("cosine", "mean"),
        default="cosine",
        help="how overlapping tiles merge: raised-cosine weights (default, seamless) or a plain mean "
        "(the official AST test scripts: --tile 384 --overlap 80 AGAN-Data, --tile 1152 --overlap 384 Dense-Haze)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="pytorch",
        help="pytorch (default) or onnxruntime (CPU, fp32; an .onnx model runs as is, a PyTorch source is "
        "exported first; tiling and --ensemble work the same)",
    )
    parser.add_argument(
        "--workers",
        type=_workers_arg,
        default="auto",
        help="tiles restored at once, each on its own thread with cores/WORKERS torch threads; 'auto' (default): "
        "2 on a CPU (about 1.3-3x faster than one pass on all cores; memory: one forward pass per worker), "
        "1 on a GPU",
    )
    parser.add_argument("--ensemble", action="store_true", help="8-way flip/rotation self-ensemble (8x slower)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="bf16 autocast (CUDA, or a CPU with AVX-512 bf16 / AMX: 1.4-2.3x faster there, PSNR within 0.01 dB "
        "of fp32 on the embedded test images; see README), "
        "fp16 autocast (CUDA only)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (one compilation per padded tile / image shape: minutes on a CPU, "
        "pays off on many images of one size)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="full tracebacks instead of one-line errors")
    return parser


def _tile_bar(name: str, disable: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A per-tile progress bar (count, rate, ETA) for one image: ``(progress callback, close)``.

    The bar appears on the first tile; an image restored in one pass shows none.
    """
    state: dict[str, tqdm] = {}

    def progress(done: int, total: int) -> None:
        if disable or total <= 1:
            return
        if "bar" not in state:
            state["bar"] = tqdm(
                total=total, unit="tile", desc=name, leave=False, file=sys.stderr, position=1, dynamic_ncols=True
            )
        state["bar"].update(done - state["bar"].n)
        if done == total:  # tqdm skips redraws within mininterval: show the finished count before it clears
            state["bar"].refresh()

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return progress, close


def _restore_one(
    model: nn.Module, src: Path, dest: Path, options: RestoreOptions, device: torch.device, quiet: bool
) -> None:
    """Read, restore and write one image; uint8 end to end for 8-bit files (no float copy of a huge photo)."""
    image = read_image(src, keep_uint8=True)
    progress, close = _tile_bar(src.name, quiet)
    try:
        restored = restore_image(model, image, options, device, out_dtype=np.uint8, progress=progress)
    finally:
        close()
    del image  # the input is not needed while the PNG is encoded
    try:
        save_png(dest, restored)
    except OSError as exc:  # name the result, not save_png's hidden temporary file
        raise OSError(exc.errno, f"cannot write {dest}: {exc.strerror or exc}") from exc


def _user_error(message: str) -> int:
    print(f"ast-restore: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None, *, resolve: Resolver | None = None) -> int:
    """Run ``ast-restore``.

    Everything a user can fix is checked before the first image is read: the output folder (created, and
    probed with a real write), the device and the model. Each is reported in one line, exit status 2;
    ``--debug`` shows the traceback instead.

    Args:
        argv: arguments without the program name; ``None``: ``sys.argv[1:]``.
        resolve: fetches model URIs (see :func:`load_model`); None: local sources only.

    Returns:
        0 when every input was restored, 1 when some could not be, 2 for bad arguments, an unusable
        output folder or a model that cannot load.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)  # ValueError (-> usage error) for CUDA where there is none
        options = RestoreOptions(
            tile=args.tile or None,
            overlap=args.overlap,
            blend=args.blend,
            ensemble=args.ensemble,
            precision=args.precision,
        )
    except (RuntimeError, ValueError) as exc:
        parser.error(str(exc))
    if isinstance(args.tile, int) and args.tile > 0 and args.overlap >= args.tile:
        # The tiling would advance by one pixel per pass (the overlap is clamped to tile - 1).
        parser.error(f"--overlap {args.overlap} must be smaller than --tile {args.tile}")
    if args.precision == "fp16" and device.type != "cuda":
        parser.error(f"--precision {args.precision} needs a CUDA device (got {device}); bf16 works on the CPU")
    if args.backend == "onnxruntime":
        if args.device not in ("auto", "cpu"):
            parser.error(f"--backend onnxruntime runs on the CPU; drop --device {args.device}")
        if args.precision != "fp32" or args.compile:
            parser.error("--backend onnxruntime runs the exported fp32 graph: drop --precision / --compile")
        device = torch.device("cpu")
    cores = cpu_count()
    workers = tile_workers(args.workers, device, args.backend, cores)
    # On the CPU `auto` tiles anything above the cap: memory bounded for any image size (one forward pass
    # per worker). One cap for any worker count: the same image restores to the same pixels everywhere.
    cap = CPU_AUTO_TILE
    options = dataclasses.replace(
        options, workers=workers, max_tile=cap if device.type == "cpu" and args.overlap < cap else None
    )

    # The output first: a folder that cannot be written must not cost a model load or a restoration.
    # (Probed, not created: a run that stops at the model leaves no empty folder behind.)
    out_dir = Path(args.output)
    problem = output_dir_problem(out_dir, "output folder")
    if problem is not None:
        return _user_error(problem)

    tuned = tune_allocator()
    try:
        model = load_model(args.model, args.weights, backend=args.backend, resolve=resolve).to(device)
        if args.compile and isinstance(model, AST):
            model.compile_network()  # compiles lazily, at the first image / tile of each padded shape
    except (ValueError, OSError, ImportError) as exc:  # CheckpointError is a ValueError; no onnxruntime
        if args.debug:
            raise
        return _user_error(f"cannot load the model: {exc}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. the folder was removed or made read-only meanwhile
        return _user_error(f"output folder {out_dir} cannot be created: {exc.strerror or exc}")
    threads = torch.get_num_threads()
    if device.type == "cpu" and workers > 1:
        set_threads(max(1, cores // workers))  # the workers share the cores: no oversubscription
    try:
        if args.debug:
            print(
                f"ast-restore: allocator tuning {'on' if tuned else 'off'}, {workers} tile worker(s) x "
                f"{torch.get_num_threads()} threads",
                file=sys.stderr,
            )
        return _restore_files(model, args, out_dir, options, device)
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (a test, a notebook)


def _restore_files(
    model: nn.Module, args: argparse.Namespace, out_dir: Path, options: RestoreOptions, device: torch.device
) -> int:
    """Restore every input of ``args`` into ``out_dir``; report each failure and go on. Returns the exit status."""
    files, missing = collect_inputs(args.inputs)
    failed = list(missing)
    for spec in missing:
        print(f"ast-restore: {spec}: no such file, folder or matching image", file=sys.stderr)
    restored = 0
    bar = tqdm(
        list(zip(files, _output_names(files, out_dir), strict=True)), unit="img", disable=args.quiet, file=sys.stderr
    )
    for src, dest in bar:
        bar.set_postfix_str(src.name, refresh=False)
        if dest.resolve() == src:
            message = f"{src}: refusing to overwrite the input with its result (choose another output folder)"
        else:
            try:
                _restore_one(model, src, dest, options, device, args.quiet)
                restored += 1
                continue
            except ImageReadError as exc:
                message = str(exc)
            except (RuntimeError, ValueError, OSError) as exc:  # e.g. out of memory, disk full
                if args.debug:
                    raise
                message = f"cannot restore {str(src)!r}: {exc}"
        failed.append(str(src))
        tqdm.write(f"ast-restore: {message}", file=sys.stderr)

    summary = f"ast-restore: {restored} restored into {out_dir}"
    if failed:
        summary += f", {len(failed)} failed: " + ", ".join(failed)
    print(summary, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
