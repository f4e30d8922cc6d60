"""The web page as a radiologist uses it, in a real headless Chromium, on a real JSRT radiograph with a model
fine-tuned by xrayfm: every layer (heatmap, each mask class, boxes) switched on and off alone, the plain image one
click away, the heatmap's colour scale, a long file name wrapped and the answer time shown.

Needs Debian's ``chromium`` and the ``playwright`` Python package, as ``test_web_page.py``; skips otherwise. The
screenshot is kept in ``test-artifacts/`` (or ``$XRAYFM_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from serve_helpers import serving

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.finetune.run import FinetuneConfig, run_finetune
from xrayfm.serve.app import create_app
from xrayfm.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UPLOADS = ("/predict", "/segment", "/detect")
LONG_NAME = "JPCLN001_" + "_".join(["chest_PA_erect_full_inspiration_anonymised_series"] * 4) + ".png"
#: The overlay's pixels: how many are painted, how many of those are opaque (alpha >= 128) and how many opaque ones
#: have each of the given colours ([r, g, b], tolerance), a checksum, and the layers the canvas says it shows.
OVERLAY = """colours => { const c = document.getElementById('overlay-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const near = (i, rgb, tol) => rgb.every((v, j) => Math.abs(d[i + j] - v) <= tol);
  let painted = 0, opaque = 0, sum = 0; const hits = colours.map(() => 0);
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] === 0) continue;
    painted++; sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2] + 17 * d[i + 3]) % 1000000007;
    if (d[i + 3] < 128) continue;
    opaque++; colours.forEach(([rgb, tol], k) => { hits[k] += near(i, rgb, tol); });
  }
  return { painted, opaque, total: c.width * c.height, hits, sum, layers: c.dataset.layers }; }"""
#: The colours of the heatmap's pixels that its legend's colour bar lacks.
HEAT_OFF_SCALE = """() => { const bar = document.getElementById('heat-bar');
  const b = bar.getContext('2d').getImageData(0, 0, bar.width, 1).data, scale = new Set();
  for (let i = 0; i < b.length; i += 4) scale.add(`${b[i]},${b[i + 1]},${b[i + 2]}`);
  const c = document.getElementById('overlay-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, off = new Set();
  for (let i = 0; i < d.length; i += 4) if (!scale.has(`${d[i]},${d[i + 1]},${d[i + 2]}`)) off.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
  return { off: [...off].slice(0, 5), left: [b[0], b[1], b[2]], right: [...b.slice(b.length - 4, b.length - 1)] }; }"""  # fmt: skip
#: For each element: does it stay inside its container, and over how many lines does it run.
FITS = """ids => ids.map(id => { const e = document.getElementById(id), box = e.getBoundingClientRect();
  const outer = e.parentElement.getBoundingClientRect(), line = parseFloat(getComputedStyle(e).lineHeight) || 20;
  return { id, inside: e.scrollWidth <= e.clientWidth && box.right <= outer.right + 0.5, lines: box.height / line }; })"""  # fmt: skip


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 fine-tuned by xrayfm on phantoms for findings, three mask classes and boxes.

    Two steps at a small learning rate: the detection head keeps scores above its 0.05 floor, so there are boxes
    to draw (a CPU cannot train Faster R-CNN to useful boxes within a test).
    """
    root = tmp_path_factory.mktemp("layers")
    data = write_phantom_dataset(root / "ph", n=16, seed=0, size=64)
    cfg = FinetuneConfig(
        dataset="phantom", root=str(data), tasks=["labels", "masks", "boxes"], arch="resnet18", img_size=64,
        layer_decay=None, drop_path=0.0, augment="none", flip=0.0, eval_splits=(), threshold=0.5,
        train=TrainConfig(out_dir=str(root / "run"), steps=2, batch_size=1, lr=1e-5, warmup_steps=1, clip_grad=0.0,
                          accelerator="cpu", precision="32-true", log_every=1, seed=0),
    )  # fmt: skip
    run_finetune(cfg)
    return root / "run" / "model"


def only(page: Any, layer: str | None, colours: list[Any]) -> dict[str, Any]:
    """Switch every layer off but ``layer`` (None: all off, "*": all on); the overlay's pixels then (:data:`OVERLAY`)."""
    for name in page.eval_on_selector_all("#layer-list input", "bs => bs.map(b => b.dataset.layer)"):
        page.set_checked(f'#layer-list input[data-layer="{name}"]', layer in (name, "*"))
    return page.evaluate(OVERLAY, colours)


def test_layers_one_by_one_plain_image_legend_wrapping_and_answer_time(
    trained_model: Path, shared_datasets: Path, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    image = tmp_path / LONG_NAME
    shutil.copy(shared_datasets / "jsrt_lungs" / "images" / "JPCLN001.png", image)  # a real 512 px radiograph
    artifacts = Path(os.environ.get("XRAYFM_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    httpx = pytest.importorskip("httpx")
    errors: list[str] = []
    external: list[str] = []
    answers: list[Any] = []
    with serving(create_app(trained_model)) as port, sync_api.sync_playwright() as p:
        server = f"http://127.0.0.1:{port}"
        # the trained head's boxes score about 0.2: the page is asked for its five best through the score field
        upload = {"file": ("x.png", image.read_bytes())}
        every_box = httpx.post(server + "/detect?min_score=0", files=upload, timeout=60)
        scores = sorted((b["score"] for b in every_box.json()["boxes"]), reverse=True)
        assert len(scores) >= 5
        min_score = f"{int(scores[4] * 1e4) / 1e4:.4f}"
        expected_boxes = sum(s >= float(min_score) for s in scores)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith((server, "data:")) else external.append(r.url))
        page.on("response", lambda r: answers.append(r) if urlparse(r.url).path in UPLOADS else None)
        page.goto(server + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('boxes')")
        assert page.is_visible("#min-score") and not page.is_visible("#layers")
        page.fill("#min-score", min_score)
        page.set_input_files("#file", str(image))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
        got = {urlparse(r.url).path: r.json() for r in answers}
        assert set(got) == set(UPLOADS) and all(r.ok for r in answers)
        classes = got["/segment"]["classes"]
        assert len(got["/detect"]["boxes"]) == expected_boxes

        # one switch per layer, in drawing order, each on
        layers = page.eval_on_selector_all("#layer-list input", "bs => bs.map(b => [b.dataset.layer, b.checked])")
        assert layers == [[n, True] for n in ["heatmap", *(f"mask:{c}" for c in classes), "boxes"]]
        page.fill("#opacity", "1")  # opaque layers: their colours read back exactly
        page.dispatch_event("#opacity", "input")
        # the colours the page draws masks and boxes in, with what rounding and anti-aliasing may change
        colours = [[rgb, 2] for rgb in page.evaluate("MASK_COLOURS")[: len(classes)]]
        colours.append([page.evaluate("BOX_COLOUR"), 8])

        # each layer alone shows exactly itself
        heat = only(page, "heatmap", colours)
        assert heat["painted"] == heat["total"] and heat["layers"] == "heatmap"
        assert page.is_visible("#heat-legend")
        scale = page.evaluate(HEAT_OFF_SCALE)
        assert scale["off"] == [], f"heatmap colours missing from its legend: {scale['off']}"
        assert scale["left"][2] > scale["left"][0] and scale["right"][0] > scale["right"][2]  # blue = low, red = high
        assert "weakest" in page.inner_text("#heat-low") and "strongest" in page.inner_text("#heat-high")
        what = page.inner_text("#heat-what")
        assert got["/predict"]["heatmap"]["method"] in what and got["/predict"]["heatmap"]["class"] in what
        for k, c in enumerate(classes):
            mask = only(page, f"mask:{c}", colours)
            assert mask["layers"] == f"mask:{c}" and not page.is_visible("#heat-legend")
            assert mask["hits"][k] == mask["opaque"] == mask["painted"], f"mask {c}: pixels of another colour"
            assert abs(mask["painted"] / mask["total"] - got["/segment"]["area_fraction"][c]) < 0.03
        boxes = only(page, "boxes", colours)
        assert boxes["layers"] == "boxes" and 0 < boxes["painted"] < 0.5 * boxes["total"]
        assert boxes["hits"][-1] == boxes["opaque"] > 0, "box outlines and labels only, in the box colour"
        none = only(page, None, colours)
        assert none["painted"] == 0 and none["layers"] == ""

        # the plain image one click away, and back with the same layers
        shown = only(page, "*", colours)
        assert shown["painted"] == shown["total"] and shown["layers"] == " ".join(n for n, _ in layers)
        page.click("#plain")
        plain = page.evaluate(OVERLAY, colours)
        assert plain["painted"] == 0 and plain["layers"] == "" and not page.is_visible("#heat-legend")
        assert page.get_attribute("#plain", "aria-pressed") == "true"
        assert page.eval_on_selector_all("#layer-list input", "bs => bs.every(b => b.checked)")
        page.click("#plain")
        assert page.evaluate(OVERLAY, colours)["sum"] == shown["sum"]
        page.keyboard.press("p")  # the same from the keyboard
        assert page.evaluate(OVERLAY, colours)["painted"] == 0
        page.keyboard.press("p")

        # the long file name wraps inside its column; the page does not scroll sideways
        assert page.inner_text("#file-name") == LONG_NAME
        for fit in page.evaluate(FITS, ["file-name", "status"]):
            assert fit["inside"] and fit["lines"] >= 2, fit
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        # the answer time: the page's round trips, and the server's own time, which they contain
        timing = page.inner_text("#timing")
        m = re.fullmatch(r"answered in (\d+) ms \(round trip: /predict (\d+) ms, /segment (\d+) ms, /detect (\d+) ms\); "
                         r"server (\d+) ms", timing)  # fmt: skip
        assert m, timing
        total, *trips, server_ms = map(int, m.groups())
        assert abs(total - sum(trips)) <= 2
        assert abs(server_ms - sum(got[e]["server_ms"] for e in UPLOADS)) <= 1
        assert all(trip + 1 >= got[e]["server_ms"] > 0 for trip, e in zip(trips, UPLOADS))

        page.fill("#opacity", "0.45")
        page.dispatch_event("#opacity", "input")
        page.screenshot(path=str(artifacts / "web_page_layers.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not external, f"the page fetched outside the server: {external}"
    assert (artifacts / "web_page_layers.png").stat().st_size > 10_000
