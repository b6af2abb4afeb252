"""``ast-demo`` in a real headless browser: Debian's chromium driven by Playwright.

The demo is started as a process (``python -m pipelines.demo``, what the ``ast-demo`` command runs) on a free
127.0.0.1 port with a tiny checkpoint. The browser opens the page, checks the model line, uploads a PNG
through the page's file input and waits for the restored image; the image the page shows is fetched and
must equal what ``ast-restore`` writes for the same file (the page restores with the same options).

Skipped, with the reason, where Gradio, Playwright or a chromium executable is missing (CI installs all
three: .ci/run). ``AST_DEMO_SCREENSHOT=<path.png>`` keeps a screenshot of the page with its result.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ast_model import create_model, save_checkpoint
from tests.servers import free_port as _free_port
from tests.tiny_pipeline import TINY_AST as TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("gradio", reason="the demo needs Gradio (pip install 'ast-pipeline[demo]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
START_S = 120
RESULT_S = 180


@pytest.fixture
def demo(tmp_path) -> tuple[str, Path]:
    """``(url, checkpoint)`` of a running demo; the process group is stopped afterwards."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(create_model("ast_t", **TINY), tmp_path / "tiny.pt")
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.demo", "--model", str(checkpoint), "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ast-demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ast-demo not up after {START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, checkpoint
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian: apt-get install chromium)")
def test_a_person_uploads_a_photo_and_gets_the_restored_image(demo, tmp_path) -> None:
    url, checkpoint = demo
    rng = np.random.default_rng(0)
    photo = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(photo).save(tmp_path / "in" / "photo.png")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.goto(url, wait_until="domcontentloaded", timeout=START_S * 1000)
            info = page.locator("#model-info")
            info.wait_for(timeout=60_000)
            assert "tiny.pt" in info.inner_text() and "AST-T" in info.inner_text() and "PyTorch" in info.inner_text()
            assert page.locator("#restored img").count() == 0  # nothing restored yet
            page.locator("#input-image input[type=file]").set_input_files(str(tmp_path / "in" / "photo.png"))
            shown = page.locator("#restored img")
            shown.wait_for(state="visible", timeout=RESULT_S * 1000)
            response = page.request.get(shown.get_attribute("src"))
            assert response.ok, response.status
            if os.environ.get("AST_DEMO_SCREENSHOT"):
                page.screenshot(path=os.environ["AST_DEMO_SCREENSHOT"], full_page=True)
            with Image.open(io.BytesIO(response.body())) as image:
                assert image.format == "PNG"
                restored = np.asarray(image.convert("RGB"))
        finally:
            browser.close()

    from ast_model.cli import main

    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(checkpoint), "--quiet"]) == 0
    with Image.open(tmp_path / "out" / "photo.png") as expected:
        np.testing.assert_array_equal(restored, np.asarray(expected))
    assert not np.array_equal(restored, photo)  # a restoration, not the upload echoed back
