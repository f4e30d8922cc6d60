"""Hostile input and load: seeded mutated PNG / DICOM uploads, then 1,000 requests.

Every response must be a 200 or a 4xx with a message, never a 5xx, and the server must still
answer afterwards; under load its memory must stay bounded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fuzz_inputs import mutations
from serve_helpers import png_bytes

from xrayfm.io.writers import write_dicom
from xrayfm.serve.app import create_app


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@pytest.fixture(scope="module")
def client(model_dir: Path):
    with TestClient(create_app(model_dir, max_upload_mb=4, queue_size=256)) as c:
        yield c


def test_mutated_uploads_never_cause_a_5xx(client: TestClient, tmp_path: Path) -> None:
    pixels = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    dicom = write_dicom(tmp_path / "a.dcm", pixels).read_bytes()
    seeds = [png_bytes(48, 40), dicom]
    codes = []
    for data in mutations(seeds, 300):
        res = client.post("/predict", files={"file": ("upload", data, "application/octet-stream")})
        codes.append(res.status_code)
        assert res.status_code == 200 or (400 <= res.status_code < 500 and res.json()["detail"]), res.text
    assert codes.count(200) < len(codes) and any(400 <= c < 500 for c in codes)
    assert client.get("/health").json()["status"] == "ok"


def test_thousand_requests_without_5xx_and_bounded_memory(client: TestClient) -> None:
    payloads = [png_bytes(64, 64, seed=i) for i in range(8)]

    def call(i: int) -> int:
        return client.post("/predict", files={"file": ("x.png", payloads[i % 8], "image/png")}).status_code

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(100)))  # warm-up: allocator and caches settle
        before = rss_mb()
        codes = list(pool.map(call, range(1000)))
    grown = rss_mb() - before
    assert all(c == 200 or c == 503 for c in codes) and codes.count(200) > 900
    assert grown < 300, f"memory grew by {grown:.0f} MB over 1,000 requests"
