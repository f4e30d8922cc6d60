"""Upload payloads, a real server on a free loopback port and a raw HTTP client for the server tests."""

from __future__ import annotations

import io
import itertools
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

BOUNDARY = "xrayfm-test-boundary"


def png_bytes(width: int = 80, height: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def blank_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid grey PNG (8 or 16 bits) of ``width`` x ``height`` black pixels, compressed row by row:
    a few hundred kilobytes for any size, which is what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), bytes(width * bit_depth // 8 + 1), []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


#: A Deformable DETR small enough for CPU tests of multi-task models (the recipe key ``detr:``).
TINY_DETR = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 6,
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app, **config) -> Iterator[int]:  # noqa: ANN001
    """Run ``app`` with uvicorn and the protocol ``xrayfm serve`` runs in a thread on a free loopback port; yields
    the port."""
    import uvicorn

    from xrayfm.serve.http_protocol import BoundedHttpToolsProtocol

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           http=BoundedHttpToolsProtocol, **config))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class BodyCounter:
    """ASGI wrapper counting the request-body bytes the application pulled from the server."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app, self.pulled = app, 0

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        async def counted():  # noqa: ANN202
            message = await receive()
            self.pulled += len(message.get("body", b""))
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


@dataclass
class RawResult:
    status: int | None  # None: no answer before the client gave up
    sent: int  # body bytes the client managed to hand to the connection
    closed: bool  # the server closed the connection after answering
    seconds: float


def request_head(path: str, token: str | None = None, extra: str = "Transfer-Encoding: chunked\r\n",
                 content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> bytes:  # fmt: skip
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{extra}Content-Type: {content_type}\r\n\r\n".encode()


def part_head(name: str = "x.png") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip


def chunked_upload(
    port: int, path: str, *, token: str | None = None, chunk: int = 65536, cap: int, pace_s: float = 0.0,
    timeout: float = 10.0, body_only: bool = False,
) -> RawResult:  # fmt: skip
    """Stream an endless chunked multipart upload (``body_only``: the bytes as the body, ``image/png``) until
    the server answers (or ``cap`` bytes went out).

    The client keeps a small send buffer and polls the socket for a millisecond after every chunk,
    stopping as soon as an answer is readable, so ``sent`` is close to what the server's side of
    the connection accepted before it answered.
    """
    t0, sent, data = time.monotonic(), 0, b""
    first = b"\x89PNG\r\n\x1a\n" if body_only else part_head()
    pieces = itertools.chain([first], itertools.repeat(b"\0" * chunk))
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(request_head(path, token, content_type="image/png") if body_only else request_head(path, token))
        try:
            for piece in pieces:
                if sent >= cap or select.select([s], [], [], 0.001)[0]:
                    break
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                if pace_s:
                    time.sleep(pace_s)
        except OSError:  # the server closed the connection while we were sending
            pass
        try:
            while part := s.recv(65536):
                data += part
            closed = True
        except TimeoutError:  # still open
            closed = False
        except OSError:  # reset: closed with unread data on the server's side
            closed = True
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return RawResult(status, sent, closed, time.monotonic() - t0)
