"""The web page in a real headless Chromium: upload a phantom radiograph, see findings and overlays;
the API docs at /docs render without fetching anything from outside the server.

Needs Debian's ``chromium`` and the ``playwright`` Python package (``.ci/run`` installs both);
skips with the reason otherwise. The screenshot is kept in ``test-artifacts/`` (or
``$XRAYFM_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.serve.app import create_app

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(model_dir), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_upload_shows_findings_heatmap_masks_and_boxes(server: str, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    data = write_phantom_dataset(tmp_path / "ph", n=1, seed=3, size=128)
    image = next((data / "images").glob("*.png"))
    artifacts = Path(os.environ.get("XRAYFM_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        external: list[str] = []
        page.on(
            "request",
            lambda r: None if r.url.startswith(server) or r.url.startswith("data:") else external.append(r.url),
        )
        page.goto(server + "/")
        assert "not for diagnosis" in page.inner_text("body")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('findings')")
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
        findings = page.locator("#findings li")
        assert findings.count() == 3
        assert {findings.nth(i).get_attribute("data-class") for i in range(3)} == {"effusion", "nodule", "cardiomegaly"}
        assert "lung" in page.inner_text("#extras")
        painted = "(() => { const c = document.getElementById('overlay-canvas');" \
                  " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;" \
                  " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })()"  # fmt: skip
        shown = page.evaluate(painted)
        assert shown > 0
        page.fill("#opacity", "0")
        page.dispatch_event("#opacity", "input")
        assert page.evaluate(painted) < shown  # heatmap and masks fade out; only box outlines stay
        page.fill("#opacity", "0.6")
        page.dispatch_event("#opacity", "input")
        page.screenshot(path=str(artifacts / "web_page.png"), full_page=True)
        page.goto(server + "/docs")
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)
        assert "xrayfm model server" in page.inner_text("body") and "/predict" in page.inner_text("body")
        browser.close()
    assert not errors, errors
    assert not external, f"the page fetched outside the server: {external}"
    assert (artifacts / "web_page.png").stat().st_size > 10_000
