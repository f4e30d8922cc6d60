"""Uploads sent as the request body itself (``Content-Type`` image/*, application/dicom or application/octet-stream):
the same answers as multipart ones, the same limits, clear refusals of other content."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import chunked_upload, png_bytes, serving

from xrayfm.io.writers import write_dicom
from xrayfm.serve.app import SPOOL_BYTES, create_app


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with TestClient(create_app(model_dir, max_upload_mb=4)) as c:
        yield c


def multipart(data: bytes) -> dict:
    return {"file": ("x.png", data, "application/octet-stream")}


def test_a_body_upload_gets_the_multipart_answer(client: TestClient) -> None:
    image = png_bytes(96, 80, seed=3)
    by_form = client.post("/predict?heatmap=true", files=multipart(image)).json()
    by_body = client.post("/predict?heatmap=true", content=image, headers={"Content-Type": "image/png"}).json()
    assert by_body["probabilities"] == by_form["probabilities"] and by_body["image"] == by_form["image"]
    assert by_body["heatmap"]["png"] == by_form["heatmap"]["png"]
    for path in ("/segment", "/detect"):
        res = client.post(path, content=image, headers={"Content-Type": "application/octet-stream"})
        assert res.status_code == 200, res.text


def test_the_format_is_sniffed_not_taken_from_the_content_type(client: TestClient, tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    res = client.post("/predict", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert res.status_code == 200 and res.json()["image"]["format"] == "dicom"
    res = client.post("/predict", content=b"not an image at all", headers={"Content-Type": "application/dicom"})
    assert res.status_code == 415 and "not a PNG, JPEG" in res.json()["detail"]


def test_a_body_beyond_the_memory_spool_is_served(client: TestClient) -> None:
    """An upload over 1 MiB goes to a temporary file until it is decoded, as a multipart one does."""
    rng = np.random.default_rng(0)
    buf = BytesIO()
    Image.fromarray(rng.integers(0, 255, (1100, 1100), dtype=np.uint8), "L").save(buf, format="PNG")
    assert len(buf.getvalue()) > SPOOL_BYTES
    res = client.post("/predict", content=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert res.status_code == 200 and res.json()["image"]["width"] == 1100


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({}, 422, "no upload: send the image as the multipart field 'file'"),
        ({"Content-Type": "text/plain"}, 415, "(got text/plain)"),
        ({"Content-Type": "application/json"}, 415, "Content-Type image/*, application/dicom or application/octet"),
    ],
)
def test_other_bodies_are_refused_with_what_to_send(client: TestClient, headers: dict, status: int,
                                                    words: str) -> None:  # fmt: skip
    res = client.post("/predict", content=png_bytes() if headers else None, headers=headers)
    assert res.status_code == status and words in res.json()["detail"]


def test_a_form_without_the_file_field_says_so(client: TestClient) -> None:
    res = client.post("/predict", files={"image": ("x.png", png_bytes(), "image/png")})
    assert res.status_code == 422 and "multipart field 'file'" in res.json()["detail"]


def test_openapi_offers_both_ways(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert {"multipart/form-data", "image/*", "application/dicom", "application/octet-stream"} <= set(body["content"])


def test_a_streamed_body_past_the_limit_is_cut_off(model_dir: Path) -> None:
    """Sent chunked (no Content-Length), a body past the upload limit is refused as its bytes arrive, and
    the connection closed."""
    with serving(create_app(model_dir, max_upload_mb=1)) as port:
        result = chunked_upload(port, "/predict", cap=16 << 20, body_only=True)
    assert result.status == 413 and result.closed and result.sent < 3 << 20
