"""The web page of a Foundation X model in a real headless Chromium: findings grouped per classification head, and
a picker for the segmentation / detection head to call; a single-model page shows no groups and no pickers.

Needs Debian's ``chromium`` and the ``playwright`` Python package, as ``test_web_page.py``; skips otherwise. The
screenshot is kept in ``test-artifacts/`` (or ``$XRAYFM_ARTIFACTS``).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from serve_helpers import TINY_DETR, serving

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.pretrain.multitask_export import save_multitask_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_serving import load_served_multitask
from xrayfm.serve.app import create_app
from xrayfm.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TASKS = {
    "nih": [TaskSpec("findings", "multilabel", ("effusion", "nodule")), TaskSpec("lungs", "segmentation", ("lung",))],
    "covid": [TaskSpec("diagnosis", "multiclass", ("normal", "covid", "pneumonia"))],
    "jsrt": [TaskSpec("organs", "segmentation", ("heart", "clavicle"))],
    "vindr": [TaskSpec("lesions", "detection", ("nodule", "mass"))],
    "rsna": [TaskSpec("opacity", "detection", ("opacity",))],
}


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served on a free local port (:func:`serve_helpers.serving`); yields its address."""
    with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


@contextmanager
def browser_page(server: str) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page on ``server`` and the upload URLs it requested; fails on page errors or outside fetches."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    errors: list[str] = []
    external: list[str] = []
    uploads: list[str] = []

    def seen(url: str) -> None:
        if not (url.startswith(server) or url.startswith("data:")):
            external.append(url)
        elif urlparse(url).path in ("/predict", "/segment", "/detect"):
            uploads.append(url)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: seen(r.url))
        page.goto(server + "/")
        yield page, uploads
        browser.close()
    assert not errors, errors
    assert not external, f"the page fetched outside the server: {external}"


def asked(uploads: list[str], endpoint: str) -> list[dict[str, list[str]]]:
    """The query parameters of each request the page sent to ``endpoint``."""
    return [parse_qs(urlparse(u).query) for u in uploads if urlparse(u).path == endpoint]


def wait_done(page: Any) -> None:
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)


@pytest.fixture(scope="module")
def multitask_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A random Foundation X model with two heads of every kind, served as ``xrayfm serve`` serves it."""
    torch.manual_seed(0)
    student = MultiTaskModel(create_model("resnet18", num_classes=0), TASKS, detr=TINY_DETR,
                             preprocess=Preprocess(96, mean=0.49, std=0.28))  # fmt: skip
    run = tmp_path_factory.mktemp("foundation_x_page")
    save_multitask_model(student, copy.deepcopy(student), run / "model", arch="resnet18", model_kwargs={},
                         preprocess=student.preprocess, info={})  # fmt: skip
    with served(create_app(run / "model", loaded=load_served_multitask(run))) as server:
        yield server


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_phantom_dataset(tmp_path_factory.mktemp("ph") / "ph", n=1, seed=3, size=128)
    return next((data / "images").glob("*.png"))


def test_every_classification_head_is_shown_and_the_dense_heads_can_be_picked(
    multitask_server: str, image: Path
) -> None:
    httpx = pytest.importorskip("httpx")
    health = httpx.get(multitask_server + "/health").json()
    of_kind = {kind: [n for n, k in health["tasks"].items() if k == kind] for kind in ("segmentation", "detection")}
    expected = httpx.post(multitask_server + "/predict", files={"file": ("x.png", image.read_bytes())}).json()["heads"]
    assert len(expected) == 2 and len(of_kind["segmentation"]) == 2 and len(of_kind["detection"]) == 2
    with browser_page(multitask_server) as (page, uploads):
        page.wait_for_function("!document.getElementById('segment-pick').hidden")
        assert page.is_visible("#detect-pick")
        for kind, endpoint in (("segmentation", "segment"), ("detection", "detect")):
            assert page.eval_on_selector_all(f"#{endpoint}-task option", "os => os.map(o => o.value)") == of_kind[kind]
        page.set_input_files("#file", str(image))
        wait_done(page)
        groups = page.locator("#findings li.head")
        assert [groups.nth(i).get_attribute("data-head") for i in range(groups.count())] == list(expected)
        for i, (name, head) in enumerate(expected.items()):
            assert name in groups.nth(i).locator("h3").inner_text()
            shown = groups.nth(i).locator("li.finding")
            percent = {shown.nth(j).get_attribute("data-class"): shown.nth(j).locator("b").inner_text()
                       for j in range(shown.count())}  # fmt: skip
            assert percent == {c: f"{100 * p:.1f}%" for c, p in head["probabilities"].items()}
        first_seg, first_det = of_kind["segmentation"][0], of_kind["detection"][0]
        assert asked(uploads, "/segment") == [{"task": [first_seg]}]
        assert asked(uploads, "/detect") == [{"task": [first_det]}]
        assert f"{first_seg}: " in page.inner_text("#extras") and f"{first_det}: " in page.inner_text("#extras")
        other_seg, other_det = of_kind["segmentation"][1], of_kind["detection"][1]
        page.select_option("#segment-task", other_seg)  # another head: the same image again
        page.wait_for_function(f"document.getElementById('extras').textContent.includes('{other_seg}: ')")
        wait_done(page)
        page.select_option("#detect-task", other_det)
        page.wait_for_function(f"document.getElementById('extras').textContent.includes('{other_det}: ')")
        wait_done(page)
        assert asked(uploads, "/segment")[-1] == {"task": [other_seg]}
        assert asked(uploads, "/detect")[-2:] == [{"task": [first_det]}, {"task": [other_det]}]
        assert all(c in page.inner_text("#extras") for c in TASKS["jsrt"][0].classes)
        assert page.locator("#findings li.head").count() == 2
        artifacts = Path(os.environ.get("XRAYFM_ARTIFACTS", REPO / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "web_page_multitask.png"), full_page=True)


def test_a_single_model_page_has_no_head_groups_or_pickers(model_dir: Path, image: Path) -> None:
    with served(create_app(model_dir)) as server, browser_page(server) as (page, uploads):
        page.wait_for_function("document.getElementById('model-name').textContent.includes('findings')")
        page.set_input_files("#file", str(image))
        wait_done(page)
        assert not page.is_visible("#segment-pick") and not page.is_visible("#detect-pick")
        assert page.locator("#findings li.head").count() == 0 and page.locator("#findings > li.finding").count() == 3
        assert asked(uploads, "/segment") == [{}] and asked(uploads, "/detect") == [{}]
        assert ": " not in page.inner_text("#extras").split("(")[0]  # no head name before the legend
