"""The HTTP API: every endpoint, tokens, limits, hostile uploads, batching, overload."""

from __future__ import annotations

import base64
import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import png_bytes

from xrayfm.io.writers import write_dicom
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.serve.app import create_app


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with TestClient(create_app(model_dir, max_upload_mb=1)) as c:
        yield c


def upload(data: bytes, name: str = "x.png") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def test_health_card_openapi_and_page(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/model").json()
    assert card["architecture"] == "eva_x_tiny_patch16" and [t["name"] for t in card["tasks"]] == [
        "findings",
        "lungs",
        "lesions",
    ]
    assert "not for diagnosis" in card["intended_use"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/segment", "/detect", "/health", "/model"} <= set(paths)
    page = client.get("/").text
    assert (
        "not for diagnosis" in page
        and "/static/app.js" in page
        and "http" not in page.split("<body>")[1].split("/docs")[0]
    )
    assert client.get("/static/app.js").status_code == 200


def test_predict_with_heatmap(client: TestClient) -> None:
    res = client.post("/predict?heatmap=true&threshold=0.4", files=upload(png_bytes(80, 64)))
    assert res.status_code == 200, res.text
    body = res.json()
    assert set(body["probabilities"]) == {"effusion", "nodule", "cardiomegaly"}
    assert body["top_finding"]["probability"] == max(body["probabilities"].values())
    assert set(body["positive"]) == {c for c, p in body["probabilities"].items() if p >= 0.4}
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap"]["png"])))
    assert heat.size == (80, 64) and body["image"] == {"width": 80, "height": 64, "format": "png", "downscale": 1}
    assert (body["heatmap"]["width"], body["heatmap"]["height"]) == (80, 64)


def test_predict_from_dicom(client: TestClient, tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    res = client.post("/predict", files=upload(path.read_bytes(), "a.dcm"))
    assert res.status_code == 200, res.text
    assert res.json()["image"]["format"] == "dicom"


def test_segment_and_detect(client: TestClient) -> None:
    seg = client.post("/segment", files=upload(png_bytes(72, 64)))
    assert seg.status_code == 200
    mask = Image.open(io.BytesIO(base64.b64decode(seg.json()["masks"]["lung"])))
    assert mask.size == (72, 64) and 0 <= seg.json()["area_fraction"]["lung"] <= 1
    det = client.post("/detect?min_score=0", files=upload(png_bytes(128, 64)))
    assert det.status_code == 200
    for box in det.json()["boxes"]:
        assert box["class"] == "nodule" and 0 <= box["box"][0] <= box["box"][2] <= 128.5


def test_a_large_upload_is_decoded_reduced_and_answered_in_its_own_pixels(client: TestClient) -> None:
    small = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8), dtype=np.uint8))  # 640 x 512: each pixel of `small` as an 8 x 8 block

    def post(endpoint: str, pixels: np.ndarray) -> dict:
        buf = io.BytesIO()
        Image.fromarray(pixels, "L").save(buf, format="PNG")
        res = client.post(endpoint, files=upload(buf.getvalue()))
        assert res.status_code == 200, res.text
        return res.json()

    det_big, det_small = post("/detect?min_score=0", big), post("/detect?min_score=0", small)
    assert det_big["image"] == {"width": 640, "height": 512, "format": "png", "downscale": 8}
    assert det_small["image"]["downscale"] == 1 and len(det_big["boxes"]) == len(det_small["boxes"]) > 0
    for b, s in zip(det_big["boxes"], det_small["boxes"]):
        assert b["box"] == pytest.approx([min(v * 8, side) for v, side in zip(s["box"], (640, 512, 640, 512))])
    pred_big, pred_small = post("/predict?heatmap=true", big), post("/predict?heatmap=true", small)
    assert pred_big["probabilities"] == pytest.approx(pred_small["probabilities"], abs=1e-6)
    assert (pred_big["heatmap"]["width"], pred_big["heatmap"]["height"]) == (80, 64)
    assert "1/downscale" in pred_big["heatmap"]["encoding"]
    seg = post("/segment", big)
    assert (seg["mask_width"], seg["mask_height"]) == (80, 64)
    assert Image.open(io.BytesIO(base64.b64decode(seg["masks"]["lung"]))).size == (80, 64)


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, "empty"),
        (b"hello world, not an image" * 10, 415, "not a PNG"),
        (png_bytes()[:60], 400, "upload"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 300, 400, "upload"),
    ],
)
def test_bad_uploads_get_4xx_with_a_message(client: TestClient, data: bytes, status: int, words: str) -> None:
    res = client.post("/predict", files=upload(data))
    assert res.status_code == status and words in res.json()["detail"]
    assert "/tmp" not in res.json()["detail"]
    assert client.get("/health").status_code == 200


def test_oversized_upload_is_refused_before_decoding(client: TestClient) -> None:
    res = client.post("/predict", files=upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 << 20)))
    assert res.status_code == 413


def test_missing_file_and_bad_parameters(client: TestClient) -> None:
    assert client.post("/predict").status_code == 422
    assert client.post("/predict?threshold=3", files=upload(png_bytes())).status_code == 422
    assert client.post("/predict?task=lungs", files=upload(png_bytes())).status_code == 422


def test_endpoint_without_its_head_is_404(tmp_path: Path) -> None:
    import torch

    from xrayfm.models import create_model
    from xrayfm.models.task_checkpoint import save_task_model
    from xrayfm.models.task_model import XrayModel
    from xrayfm.tasks import TaskSpec

    torch.manual_seed(0)
    backbone = create_model("resnet18", num_classes=0)
    model = XrayModel(
        backbone, [TaskSpec("f", "multilabel", ("a",))], preprocess=resolve_preprocess(backbone, img_size=64)
    )
    save_task_model(model, tmp_path, arch="resnet18", model_kwargs={}, info={})
    with TestClient(create_app(tmp_path)) as c:
        res = c.post("/segment", files=upload(png_bytes()))
        assert res.status_code == 404 and "no segmentation head" in res.json()["detail"]
        assert c.post("/predict?heatmap=true", files=upload(png_bytes())).status_code == 200
        res = c.post("/predict?heatmap=true&method=rollout", files=upload(png_bytes()))
        assert res.status_code == 422 and "need a ViT" in res.json()["detail"]


def test_token_is_required_when_set(model_dir: Path) -> None:
    with TestClient(create_app(model_dir, token="s3cret")) as c:
        assert c.get("/model").status_code == 401
        assert c.post("/predict", files=upload(png_bytes())).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert c.post("/predict", files=upload(png_bytes()), headers=wrong).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict", files=upload(png_bytes()), headers=ok).status_code == 200
        assert c.get("/model", headers=ok).status_code == 200


def test_health_shows_only_liveness_without_the_token(model_dir: Path) -> None:
    with TestClient(create_app(model_dir, token="s3cret")) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/health", headers={"Authorization": "Bearer nope"}).json() == {"status": "ok"}
        c.post("/segment", files=upload(png_bytes()))
        detail = c.get("/health", headers={"Authorization": "Bearer s3cret"}).json()
        assert detail["auth_required"] is True and detail["model"] == "eva_x_tiny_patch16"
        assert detail["backend"] == "torch" and detail["refused"]["unauthorised"] == 1
    with TestClient(create_app(model_dir)) as c:  # no token set: nothing to hide
        assert c.get("/health").json()["model"] == "eva_x_tiny_patch16"


def test_docs_work_offline(client: TestClient) -> None:
    html = client.get("/docs").text
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
    assert len(urls) >= 3 and not [u for u in urls if "//" in u], urls  # script, style sheet, schema: all local
    assert "cdn" not in html.lower()
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/redoc").status_code == 404  # ReDoc's page would load its logo from outside


def test_concurrent_requests_share_batches(model_dir: Path) -> None:
    with TestClient(create_app(model_dir, max_batch=8, max_wait_ms=200)) as c:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: c.post("/predict", files=upload(png_bytes(seed=i))).status_code, range(16)))
        assert codes == [200] * 16
        health = c.get("/health").json()
        assert health["largest_batch"] > 1 and health["batches"] < 16
        sizes = {int(b): n for b, n in health["batch_sizes"].items()}  # every request in one batch of a size
        assert sum(b * n for b, n in sizes.items()) == health["requests"] == 16
        assert sum(sizes.values()) == health["batches"] and max(sizes) == health["largest_batch"]


def decoding_threads(app, monkeypatch: pytest.MonkeyPatch) -> list[str]:  # noqa: ANN001
    """The names of the threads that decode the app's uploads, one per upload, as they come."""
    runtime, names = app.state.runtime, []
    decode = runtime.decode
    monkeypatch.setattr(runtime, "decode", lambda *a: names.append(threading.current_thread().name) or decode(*a))
    return names


def test_a_lone_upload_is_decoded_and_answered_in_one_trip_to_the_model_thread(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing else to do, the model's thread decodes the upload and answers it (no stop at a decoding
    thread); the answers are those of the queued path, and /health counts it as a batch of one."""
    app = create_app(model_dir)
    decoded_on = decoding_threads(app, monkeypatch)
    with TestClient(app) as c:
        lone = [c.post(path, files=upload(png_bytes(seed=3))).json() for path in ("/predict", "/segment", "/detect")]
        health = c.get("/health").json()
        monkeypatch.setattr(app.state.batcher, "idle", lambda: False)  # every upload through the queue
        queued = [c.post(path, files=upload(png_bytes(seed=3))).json() for path in ("/predict", "/segment", "/detect")]
    assert [n.split("_")[0] for n in decoded_on] == ["xrayfm-wide"] * 3 + ["xrayfm-codec"] * 3
    assert (health["requests"], health["batches"], health["wide_batches"], health["batch_sizes"]) == (3, 3, 3, {"1": 3})
    for a, b in zip(lone, queued):
        assert {k: v for k, v in a.items() if k != "server_ms"} == {k: v for k, v in b.items() if k != "server_ms"}


def test_a_lone_dicom_or_large_upload_is_decoded_off_the_model_thread(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A DICOM upload (decoded in a child, up to --decode-timeout) or one over ALONE_MAX_PIXELS never holds the
    model's thread while it decodes, even alone: a request arriving meanwhile would wait for it."""
    import xrayfm.serve.app as app_module

    app = create_app(model_dir)
    decoded_on = decoding_threads(app, monkeypatch)
    dicom = write_dicom(tmp_path / "a.dcm", np.random.default_rng(0).random((80, 70)).astype(np.float32)).read_bytes()
    with TestClient(app) as c:
        assert c.post("/predict", files=upload(dicom, "a.dcm")).status_code == 200
        assert c.post("/predict", files=upload(png_bytes(80, 70))).status_code == 200  # 5,600 px: on the model's
        monkeypatch.setattr(app_module, "ALONE_MAX_PIXELS", 80 * 70 - 1)
        assert c.post("/predict", files=upload(png_bytes(80, 70))).status_code == 200
    assert [n.split("_")[0] for n in decoded_on] == ["xrayfm-codec", "xrayfm-wide", "xrayfm-codec"]


def test_full_queue_answers_503_and_recovers(model_dir: Path) -> None:
    with TestClient(create_app(model_dir, max_batch=1, max_wait_ms=0, queue_size=1)) as c:
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda i: c.post("/predict", files=upload(png_bytes(seed=i))).status_code, range(24)))
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        assert c.get("/health").json()["rejected"] == codes.count(503)
        assert c.post("/predict", files=upload(png_bytes())).status_code == 200


def test_a_batch_runs_only_the_heads_its_requests_need(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayfm.serve.runtime import ModelRuntime

    runtime = ModelRuntime(model_dir)
    called: list[str] = []
    for name, head in runtime.model.heads.items():
        monkeypatch.setattr(head, "forward", lambda *a, _f=head.forward, _n=name, **k: called.append(_n) or _f(*a, **k))
    x = runtime.prepare(np.random.default_rng(0).random((70, 50)))
    out = runtime.run_batch([(x, "findings"), (x, "findings")])
    assert called == ["findings"] and [set(o.outputs) for o in out] == [{"findings"}, {"findings"}]
    called.clear()
    out = runtime.run_batch([(x, "findings"), (x, "lungs")])
    assert called == ["findings", "lungs"] and out[1].outputs["lungs"].shape == (1, 64, 64)
    called.clear()
    runtime.run_batch([(x, "findings", "gradcam")])  # a heatmap pass runs its own head only, too
    assert called == ["findings"]
