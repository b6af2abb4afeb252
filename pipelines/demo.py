"""``ast-demo``: a local web page that restores a dropped image with an AST model (Gradio).

    ast-demo --model models:/rain-ast@champion            # http://127.0.0.1:7860
    ast-demo --model models/rain/final.pt --backend onnxruntime --port 8080

The page shows the model (source, registered version where there is one, variant, backend), an input
panel where a person drops or picks an image, and the restored image beside it. Large photos are
restored tile by tile exactly as ``ast-restore`` does (same defaults: automatic tiling, tiles of at most
384 px on the CPU, cosine blending), with a progress bar per tile; the result is a lossless PNG that can be
downloaded from its panel. Only 127.0.0.1 is served unless ``--host`` says otherwise.

Gradio is an optional dependency: ``pip install 'ast-pipeline[demo]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

__all__ = ["build_app", "build_parser", "describe_model", "main"]

Loader = Callable[..., nn.Module]  # (spec, weights, *, backend) -> model: pipelines.model_source.load_model


def describe_model(spec: str, model: nn.Module, backend: str) -> str:
    """One line naming the model for the page: source, registered version (MLflow aliases), variant, backend."""
    from pipelines.model_source import is_mlflow_uri

    parts = [f"`{spec}`"]
    if is_mlflow_uri(spec) and spec.startswith("models:/") and "@" in spec:
        name, alias = spec[len("models:/") :].split("@", 1)
        try:
            from mlflow import MlflowClient

            parts.append(f"version {MlflowClient().get_model_version_by_alias(name, alias).version}")
        except Exception:  # the page still works without the version number
            pass
    variant = getattr(model, "variant", None)
    if variant:
        parts.append(str(variant).replace("_", "-").upper())
    parts.append("onnxruntime" if backend == "onnxruntime" else "PyTorch")
    return " · ".join(parts)


def _restore_fn(model: nn.Module, device: Any) -> Callable[..., np.ndarray | None]:
    """The page's callback: uint8 ``(H, W, 3)`` in, restored uint8 out, ``ast-restore``'s options."""
    import gradio as gr

    from ast_model.eval.restore import CPU_AUTO_TILE, RestoreOptions, plan_tiles, restore_image

    # A gr.Progress() default is how Gradio injects its progress tracker (it inspects the signature).
    def restore(image: np.ndarray | None, ensemble: bool, progress: gr.Progress = gr.Progress()) -> np.ndarray | None:  # noqa: B008
        if image is None:
            return None
        options = RestoreOptions(ensemble=ensemble, max_tile=CPU_AUTO_TILE if device.type == "cpu" else None)
        _, passes = plan_tiles(model, image.shape[:2], options, device)
        progress(0.0, desc=f"restoring ({passes} tile{'s' if passes > 1 else ''})")

        def tick(done: int, total: int) -> None:
            progress(done / total, desc=f"tile {done}/{total}")

        rgb = np.ascontiguousarray(image[..., :3])  # (H, W, 3) uint8; an alpha channel is dropped
        return restore_image(model, rgb, options, device, out_dtype=np.uint8, progress=tick)

    return restore


def build_app(model: nn.Module, title: str, device: Any = None) -> Any:
    """The Gradio Blocks page for ``model`` (not launched).

    Args:
        model: any ``(B, 3, H, W) -> (B, 3, H, W)`` restorer (PyTorch or :class:`OnnxRestorer`).
        title: the model line shown under the heading (see :func:`describe_model`).
        device: where the model runs (default: the CPU).

    Returns:
        The ``gradio.Blocks``.
    """
    import gradio as gr
    import torch

    device = torch.device(device or "cpu")
    restore = _restore_fn(model, device)
    with gr.Blocks(title="AST image restoration") as app:
        gr.Markdown(f"# AST image restoration\nModel: {title}", elem_id="model-info")
        with gr.Row(equal_height=True):
            # PNG out: lossless, the pixels ast-restore would write (Gradio's default output format is WebP).
            source = gr.Image(
                label="Input", type="numpy", image_mode="RGB", sources=["upload", "clipboard"], elem_id="input-image"
            )
            result = gr.Image(label="Restored", type="numpy", format="png", interactive=False, elem_id="restored")
        with gr.Row():
            ensemble = gr.Checkbox(label="8-way self-ensemble (8x slower)", value=False)
            button = gr.Button("Restore", variant="primary")
        gr.Markdown(
            "Large photos are restored in overlapping tiles (at most 384 px on the CPU) and blended; "
            "the progress bar counts tiles."
        )
        source.upload(restore, inputs=[source, ensemble], outputs=result)
        button.click(restore, inputs=[source, ensemble], outputs=result)
    return app


def build_parser() -> argparse.ArgumentParser:
    """The ``ast-demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ast-demo", description="A local web page that restores images with an AST model."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="what ast-restore --model accepts: models:/NAME@ALIAS, a checkpoint, a variant with "
        "--weights, an .onnx (with --backend onnxruntime)",
    )
    parser.add_argument("--weights", help="weights for a variant name")
    parser.add_argument(
        "--backend", choices=("pytorch", "onnxruntime"), default="pytorch", help="pytorch (default) or onnxruntime"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None, *, load: Loader | None = None) -> int:
    """Run ``ast-demo`` until interrupted.

    Args:
        argv: arguments without the program name.
        load: ``(spec, weights, *, backend) -> model`` (default :func:`pipelines.model_source.load_model`).

    Returns:
        0 after a clean stop; 2 when the model cannot load or Gradio is missing (one line).
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home (and no network here)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("ast-demo: needs Gradio: pip install 'ast-pipeline[demo]'", file=sys.stderr)
        return 2
    if load is None:
        from pipelines.model_source import load_model as load
    try:
        model = load(args.model, args.weights, backend=args.backend)
    except (ValueError, OSError, ImportError) as exc:
        print(f"ast-demo: cannot load the model: {exc}", file=sys.stderr)
        return 2
    title = describe_model(args.model, model, args.backend)
    app = build_app(model, title)
    print(f"ast-demo: {title} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    app.queue(default_concurrency_limit=1)  # one restoration at a time: the model is not shared safely
    app.launch(server_name=args.host, server_port=args.port, share=False, show_error=True, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
