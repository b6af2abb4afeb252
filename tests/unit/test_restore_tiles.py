"""Issue 13, finding 4: huge images stream through tiles with a per-tile progress count, buffers allocated
once, a bounded tile on the CPU, and the same result as the whole-tensor tiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ast_model.eval.images import to_uint8
from ast_model.eval.restore import RestoreOptions, count_tiles, plan_tiles, restore_image, tile_forward

CPU = torch.device("cpu")


class Smooth(nn.Module):
    """A small conv net with spatial context (tiles differ from the whole image near their borders)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.tanh(self.conv(x))


class Pointers(nn.Module):
    """Identity that records the storage address of every input tensor it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.ptrs: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ptrs.append(x.data_ptr())
        return x * 1.0


def _image(h: int, w: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.random((h, w, 3))
    return (img * 255).round().astype(np.uint8) if dtype == np.uint8 else img.astype(dtype)


@pytest.mark.parametrize("blend", ["cosine", "mean"])
def test_streamed_image_equals_the_tensor_tiling(blend: str) -> None:
    model = Smooth().eval()
    image = _image(150, 230)
    opts = RestoreOptions(tile=64, overlap=16, blend=blend)
    streamed = restore_image(model, image, opts)  # band by band into a preallocated result
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        reference = tile_forward(model, x, 64, 16, CPU, blend)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(streamed, reference, atol=2e-6, rtol=0)


def test_uint8_in_and_out_matches_float_then_quantise() -> None:
    model = Smooth().eval()
    image8 = _image(97, 141, np.uint8)
    opts = RestoreOptions(tile=48, overlap=12)
    out8 = restore_image(model, image8, opts, out_dtype=np.uint8)
    ref = to_uint8(restore_image(model, image8.astype(np.float32) / 255.0, opts))
    assert out8.dtype == np.uint8 and out8.shape == image8.shape
    diff = np.abs(out8.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only float ties at .5 can round differently


def test_progress_counts_every_tile_up_to_the_planned_total() -> None:
    model = Smooth().eval()
    image = _image(130, 300)
    opts = RestoreOptions(tile=64, overlap=16)
    calls: list[tuple[int, int]] = []
    restore_image(model, image, opts, progress=lambda done, total: calls.append((done, total)))
    tile, planned = plan_tiles(model, (130, 300), opts)
    expected = count_tiles(130, 300, 64, 16)
    assert tile == 64 and planned == expected == 3 * 6
    assert calls == [(i, expected) for i in range(1, expected + 1)]
    calls.clear()
    restore_image(model, image[:40, :50], opts, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]  # one whole pass


def test_the_input_tile_buffer_is_allocated_once() -> None:
    model = Pointers()
    restore_image(model, _image(100, 170), RestoreOptions(tile=32, overlap=8))
    assert len(model.ptrs) == count_tiles(100, 170, 32, 8) > 20
    assert len(set(model.ptrs)) == 1  # every tile is copied into the same buffer
    model.ptrs.clear()
    tile_forward(model, torch.rand(1, 3, 70, 90), 32, 8, CPU)
    assert len(set(model.ptrs)) == 1


def test_max_tile_bounds_auto_tiling_for_any_image_size() -> None:
    model = Pointers()
    opts = RestoreOptions(max_tile=64, overlap=16, memory_budget=10**12)  # the budget alone would say "whole"
    assert plan_tiles(model, (100, 150), opts) == (64, count_tiles(100, 150, 64, 16))
    assert plan_tiles(model, (60, 64), opts) == (None, 1)  # small images stay whole
    assert plan_tiles(model, (100, 150), RestoreOptions(memory_budget=10**12)) == (None, 1)
    with pytest.raises(ValueError, match="max_tile"):
        RestoreOptions(max_tile=16, overlap=16)


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from ast_model import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("ast_t", embed_dim=8, depths=[1] * 9, win_size=4)  # pads to 64 px
    return save_checkpoint(model, tmp_path_factory.mktemp("w") / "tiny.pt")


def test_cli_shows_a_per_tile_progress_bar(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from ast_model.cli import main

    src = tmp_path / "wide.png"
    Image.fromarray(_image(100, 200, np.uint8)).save(src)
    assert main([str(src), str(tmp_path / "out"), "--model", str(checkpoint), "--tile", "64", "--overlap", "16"]) == 0
    err = capsys.readouterr().err
    total = count_tiles(100, 200, 64, 16)
    assert f"{total}/{total}" in err and "tile" in err  # the tile bar reached its end (tqdm: n/total, unit)
    restored = np.asarray(Image.open(tmp_path / "out" / "wide.png"))
    assert restored.shape == (100, 200, 3)


def test_cli_refuses_an_overlap_as_large_as_the_tile(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from ast_model.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(_image(90, 130, np.uint8)).save(src)
    with pytest.raises(SystemExit) as exc:  # the tiling would advance one pixel per pass: thousands of tiles
        main([str(src), str(tmp_path / "out"), "--model", str(checkpoint), "--tile", "64"])  # overlap 64
    assert exc.value.code == 2
    assert "--overlap 64 must be smaller than --tile 64" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_result_matches_the_library_uint8_path(checkpoint: Path, tmp_path: Path) -> None:
    from ast_model import load_checkpoint
    from ast_model.cli import main

    src = tmp_path / "a.png"
    image = _image(90, 130, np.uint8)
    Image.fromarray(image).save(src)
    assert (
        main(
            [str(src), str(tmp_path / "out"), "--model", str(checkpoint), "--tile", "64", "--overlap", "16", "--quiet"]
        )
        == 0
    )
    opts = RestoreOptions(tile=64, overlap=16)
    expected = restore_image(load_checkpoint(checkpoint), image, opts, out_dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), expected)


# ------------------------------------------------------------------------------- tiles on worker threads
class Recorder(nn.Module):
    """Smooth, and records per pass whether it ran without autograd and which buffer it read."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner = Smooth()
        self.fail_at = fail_at
        self.calls: list[tuple[bool, int]] = []  # list.append is atomic under the GIL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_inference_mode_enabled(), x.data_ptr()))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise RuntimeError("pass failed")
        return self.inner(x)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_workers_give_the_same_image_as_one_pass_at_a_time(workers: int, dtype) -> None:
    image = _image(150, 230, dtype)
    one = restore_image(Smooth().eval(), image, RestoreOptions(tile=64, overlap=16), out_dtype=dtype)
    model = Recorder()
    many = restore_image(model, image, RestoreOptions(tile=64, overlap=16, workers=workers), out_dtype=dtype)
    np.testing.assert_array_equal(many, one)  # blended in tile order: bit for bit the same
    assert len(model.calls) == count_tiles(150, 230, 64, 16)
    assert all(inference for inference, _ in model.calls)  # each worker thread entered inference mode
    assert len({ptr for _, ptr in model.calls}) == workers  # one input buffer per worker, reused


def test_tile_forward_with_workers_equals_one_at_a_time() -> None:
    x = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        one = tile_forward(Smooth().eval(), x, 32, 8, CPU)
        many = tile_forward(Smooth().eval(), x, 32, 8, CPU, workers=2)
    torch.testing.assert_close(many, one, atol=0, rtol=0)


def test_workers_report_every_tile_in_order() -> None:
    seen: list[tuple[int, int]] = []
    restore_image(
        Smooth().eval(),
        _image(100, 170),
        RestoreOptions(tile=32, overlap=8, workers=2),
        progress=lambda d, t: seen.append((d, t)),
    )
    total = count_tiles(100, 170, 32, 8)
    assert seen == [(i, total) for i in range(1, total + 1)]


def test_a_failing_pass_on_a_worker_stops_the_image_and_its_threads() -> None:
    import threading

    before = threading.active_count()
    model = Recorder(fail_at=5)
    with pytest.raises(RuntimeError, match="pass failed"):
        restore_image(model, _image(100, 170), RestoreOptions(tile=32, overlap=8, workers=2))
    assert len(model.calls) < count_tiles(100, 170, 32, 8)  # the queued passes did not run
    assert threading.active_count() == before  # the worker threads are gone


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        RestoreOptions(workers=0)


def test_cli_workers_auto_is_two_on_a_cpu_and_one_elsewhere() -> None:
    from ast_model.cli import tile_workers

    assert tile_workers("auto", CPU, "pytorch", cores=16) == 2
    assert tile_workers("auto", CPU, "pytorch", cores=1) == 1
    assert tile_workers("auto", CPU, "onnxruntime", cores=16) == 1
    assert tile_workers("auto", torch.device("cuda"), "pytorch", cores=16) == 1
    assert tile_workers(3, CPU, "pytorch", cores=2) == 3


def test_cli_workers_leave_the_callers_thread_count(checkpoint: Path, tmp_path: Path, capsys) -> None:
    from ast_model.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(_image(90, 130, np.uint8)).save(src)
    threads = torch.get_num_threads()
    args = [str(src), str(tmp_path / "out"), "--model", str(checkpoint), "--tile", "64", "--overlap", "16"]
    assert main([*args, "--workers", "2", "--quiet", "--debug"]) == 0
    assert "2 tile worker(s)" in capsys.readouterr().err
    assert torch.get_num_threads() == threads
    with pytest.raises(SystemExit) as exc:
        main([*args, "--workers", "0"])
    assert exc.value.code == 2
    assert "workers must be >= 1" in capsys.readouterr().err


def test_cli_auto_tiles_give_the_same_pixels_for_any_worker_count(checkpoint: Path, tmp_path: Path) -> None:
    """One CPU tile cap whatever --workers: a 1-core and a 16-core machine restore an image identically."""
    from ast_model.cli import main
    from ast_model.eval.restore import CPU_AUTO_TILE

    src = tmp_path / "big.png"
    Image.fromarray(_image(CPU_AUTO_TILE + 20, CPU_AUTO_TILE + 50, np.uint8)).save(src)  # tiles on the CPU
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert main([str(src), str(out), "--model", str(checkpoint), "--workers", workers, "--quiet"]) == 0
        outs.append(np.asarray(Image.open(out / "big.png")))
    np.testing.assert_array_equal(outs[0], outs[1])
