"""Uploads refused as their bytes arrive, against the real app in a real uvicorn server (loopback).

A raw socket client streams chunked bodies without a Content-Length (what curl sends for a pipe)
and stops as soon as an answer is readable; a counting wrapper records how many body bytes the
app pulled from the server.
"""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest
from serve_helpers import BodyCounter, chunked_upload, part_head, request_head, serving

from xrayfm.serve.app import create_app
from xrayfm.serve.guard import FRAMING

LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server(model_dir: Path):
    pytest.importorskip("uvicorn")
    app = BodyCounter(create_app(model_dir, token="s3cret", max_upload_mb=1, body_timeout=2.0,
                                 body_idle_timeout=1.0))  # fmt: skip
    with serving(app) as port:
        yield port, app


def test_chunked_oversize_upload_without_token_is_refused_before_twice_the_limit(server) -> None:  # noqa: ANN001
    port, counter = server
    before = counter.pulled
    result = chunked_upload(port, "/predict", cap=8 * LIMIT)
    assert result.status == 401 and result.closed
    assert result.sent < 2 * LIMIT and counter.pulled == before


def test_chunked_oversize_upload_with_token_is_cut_at_the_limit(server) -> None:  # noqa: ANN001
    port, counter = server
    before = counter.pulled
    result = chunked_upload(port, "/segment", token="s3cret", cap=64 * LIMIT)
    assert result.status == 413 and result.closed and result.sent < 64 * LIMIT
    # the guard stops at the first message past the limit; uvicorn hands over at most one socket read
    # (256 KiB) on top of its 64 KiB buffer per message
    assert counter.pulled - before <= LIMIT + FRAMING + 320 * 1024 < 2 * LIMIT


def test_slow_upload_gets_408_and_is_closed(server) -> None:  # noqa: ANN001
    port, _ = server
    result = chunked_upload(port, "/predict", token="s3cret", chunk=1, cap=10**6, pace_s=0.25, timeout=6)
    assert result.status == 408 and result.closed and 1.9 < result.seconds < 5


def test_many_trickling_clients_are_all_closed_by_the_deadline(server) -> None:  # noqa: ANN001
    port, _ = server
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    answers = {s: b"" for s in socks}
    try:
        for s in socks:
            s.sendall(request_head("/predict", "s3cret") + b"%x\r\n%s\r\n" % (len(part_head()), part_head()))
        t0, open_ = time.monotonic(), set(socks)
        while open_ and time.monotonic() - t0 < 5:
            for s in select.select(list(open_), [], [], 0.5)[0]:
                try:
                    part = s.recv(65536)
                except OSError:  # reset after the answer: closed
                    part = b""
                answers[s] += part
                if not part:
                    open_.discard(s)
            for s in open_:
                try:
                    s.sendall(b"1\r\n\0\r\n")
                except OSError:
                    pass
        assert not open_, f"{len(open_)} of 20 slow connections still open after 5 s"
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers.values())
    finally:
        for s in socks:
            s.close()


def test_the_api_still_answers_after_the_refusals(server) -> None:  # noqa: ANN001
    """Each refusal is counted and leaves nothing in flight (its own refusals: under xdist the tests above
    may run in another process)."""
    import httpx
    from serve_helpers import png_bytes

    port, _ = server
    auth = {"Authorization": "Bearer s3cret"}

    def refused() -> dict:
        return httpx.get(f"http://127.0.0.1:{port}/health", headers=auth).json()["refused"]

    before = refused()
    assert chunked_upload(port, "/predict", cap=2 * LIMIT).status == 401
    assert chunked_upload(port, "/predict", token="s3cret", cap=4 * LIMIT).status == 413
    assert chunked_upload(port, "/predict", token="s3cret", chunk=1, cap=10**6, pace_s=1.5, timeout=6).status == 408
    res = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("x.png", png_bytes(), "image/png")},
                     headers=auth)  # fmt: skip
    assert res.status_code == 200, res.text
    health = httpx.get(f"http://127.0.0.1:{port}/health", headers=auth).json()
    after = health["refused"]
    assert [after[k] - before[k] for k in ("unauthorised", "too_large", "too_slow")] == [1, 1, 1]
    assert health["uploads"]["in_flight"] == 0
