"""The HTTP protocol ``xrayfm serve`` runs: httptools with request heads bounded as they arrive."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("httptools")

from fastapi import FastAPI, Request  # noqa: E402
from serve_helpers import serving  # noqa: E402

from xrayfm.serve.http_protocol import HEAD_TOO_LARGE, MAX_HEAD_BYTES, head_size  # noqa: E402


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    with serving(app) as p:
        yield p


def post(body: bytes, extra: str = "") -> bytes:
    return (f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


def answers(sock: socket.socket, count: int) -> list[bytes]:
    """The first ``count`` answers on ``sock`` (heads and bodies), or fewer when the server closed it."""
    data, out = b"", []
    while len(out) < count:
        while (end := data.find(b"\r\n\r\n")) < 0:
            if not (part := sock.recv(65536)):
                return out
            data += part
        length = int(data[:end].lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
        while len(data) < end + 4 + length:
            if not (part := sock.recv(65536)):
                return out
            data += part
        out.append(data[: end + 4 + length])
        data = data[end + 4 + length :]
    return out


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_pipelined_uploads_with_large_bodies_are_all_answered(port: int) -> None:
    """The head count must not take a previous message's body for head bytes: requests sent back to back in
    one write, each with a 200 kB body, are all answered."""
    bodies = [bytes([k]) * 200_000 for k in range(3)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(post(b) for b in bodies))
        got = answers(s, 3)
    assert [a.split(b" ", 2)[1] for a in got] == [b"200"] * 3
    assert all(a.endswith(b'{"bytes":200000}') for a in got)


def test_a_head_just_under_the_bound_is_served(port: int) -> None:
    base = head_size(b"/echo", [(b"host", b"127.0.0.1"), (b"content-length", b"2"), (b"x-pad", b"")])
    pad = "a" * (MAX_HEAD_BYTES - base)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(post(b"ok", f"X-Pad: {pad}\r\n"))
        (answer,) = answers(s, 1)
    assert answer.startswith(b"HTTP/1.1 200")


def test_a_complete_head_over_the_bound_is_refused(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(post(b"ok", f"X-Pad: {'a' * MAX_HEAD_BYTES}\r\n"))
        (answer,) = answers(s, 1)
        assert answer.startswith(b"HTTP/1.1 400") and HEAD_TOO_LARGE.encode() in answer
        assert closed_by_server(s)


def test_a_trickled_endless_header_is_cut_off_near_the_bound(port: int) -> None:
    """A header that never ends (httptools would join its pieces in memory for ever) is refused once the head
    passes the bound, and the connection closed: the server read little more than the bound."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        try:
            while sent < 50 * MAX_HEAD_BYTES:
                s.sendall(b"a" * 1024)
                sent += 1024
                time.sleep(0.002)  # each piece its own read on the server's side
        except OSError:  # closed by the server while we were sending
            pass
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 400") and HEAD_TOO_LARGE.encode() in data
    assert sent < 4 * MAX_HEAD_BYTES


def test_keep_alive_connections_serve_request_after_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for k in range(5):
            s.sendall(post(b"x" * k))
            (answer,) = answers(s, 1)
            assert answer.endswith(b'{"bytes":%d}' % k)
