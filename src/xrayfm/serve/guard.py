"""Refuse uploads as their bytes arrive: token, size, time and admission in front of the app.

FastAPI parses a multipart body before any dependency runs, so a token or size check written as
a dependency comes after the whole body was read (to a temporary file when it is large). This
pure ASGI middleware sits between the HTTP server and the app instead and, for every request:

- on the upload routes, checks the bearer token before a byte of the body is read (401) and
  takes an admission slot (503 with ``Retry-After`` when none is free);
- refuses a declared ``Content-Length`` over the limit at once (413), and counts the bytes of a
  streamed (chunked) body as they arrive, answering 413 as soon as the count passes the limit;
- gives the body ``body_timeout`` seconds in all and ``idle_timeout`` seconds between chunks
  (408 otherwise);
- closes the connection after any answer sent while body bytes may still be on their way, so
  the server never reads (nor discards) the rest of a refused upload.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Collection
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xrayfm.serve.admission import Admission

TOKEN_HINT = "missing or wrong API token (Authorization: Bearer TOKEN)"
BUSY = "server busy: too many requests waiting; retry shortly"
CLOSE = (b"connection", b"close")
#: Room for the multipart framing (boundaries, part headers) around an upload of the largest size.
FRAMING = 65_536


def token_matches(authorization: str | bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer TOKEN`` (constant-time comparison)."""
    given = authorization.encode("latin-1") if isinstance(authorization, str) else authorization or b""
    return hmac.compare_digest(given, f"Bearer {token}".encode())


@dataclass
class GuardStats:
    """Requests the guard answered itself, by reason (for ``/health``)."""

    unauthorised: int = 0
    too_large: int = 0
    too_slow: int = 0


async def respond(send: Send, status: int, detail: str, headers: Collection[tuple[bytes, bytes]] = ()) -> None:
    """Send a JSON ``{"detail": ...}`` answer and ask the server to close the connection."""
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    CLOSE, *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class UploadGuard:
    """ASGI middleware enforcing the upload limits (see the module docstring).

    Args:
        app: The application behind the guard.
        upload_paths: Routes that take uploads: token checked and admission slot taken up front.
        token: Required bearer token, or None.
        max_upload: Largest upload in bytes; a body may exceed it by ``FRAMING`` (multipart headers).
        body_timeout: Seconds the whole body may take to arrive.
        idle_timeout: Seconds allowed between two chunks of a body.
        admission: Request slots of the upload routes.
        stats: Where to count the refusals (shared with ``/health``); a new one by default.
    """

    def __init__(
        self, app: ASGIApp, *, upload_paths: Collection[str], token: str | None, max_upload: int, body_timeout: float,
        idle_timeout: float, admission: Admission, stats: GuardStats | None = None,
    ) -> None:  # fmt: skip
        self.app, self.upload_paths, self.token = app, frozenset(upload_paths), token
        self.max_body = max_upload + FRAMING
        self.too_large_text = f"upload larger than {max_upload / 2**20:g} MB"
        self.body_timeout, self.idle_timeout, self.admission = body_timeout, min(idle_timeout, body_timeout), admission
        self.stats = stats if stats is not None else GuardStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        upload = scope["path"] in self.upload_paths
        if upload and self.token is not None and not token_matches(headers.get(b"authorization"), self.token):
            self.stats.unauthorised += 1
            await respond(send, 401, TOKEN_HINT, [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            self.stats.too_large += 1
            await respond(send, 413, self.too_large_text)
            return
        if upload and not self.admission.enter():
            await respond(send, 503, BUSY, [(b"retry-after", b"1")])
            return
        has_body = (length is not None and length != b"0") or b"transfer-encoding" in headers
        body = _GuardedBody(self, receive, send, has_body)
        try:
            await self.app(scope, body.receive, body.send)
        finally:
            if upload:
                self.admission.leave()


class _GuardedBody:
    """One request's ``receive`` and ``send`` with the byte count, deadlines and refusal state."""

    def __init__(self, guard: UploadGuard, receive: Receive, send: Send, has_body: bool) -> None:
        self.guard, self._receive, self._send = guard, receive, send
        self.done, self.refused, self.started, self.read = not has_body, False, False, 0
        self.deadline = asyncio.get_running_loop().time() + guard.body_timeout

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.done:  # after the body only a disconnect can come: no deadline
            return await self._receive()
        g = self.guard
        left = self.deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(0.0, min(g.idle_timeout, left))):
                message = await self._receive()
        except TimeoutError:
            g.stats.too_slow += 1
            limit = f"{g.idle_timeout:g} s between chunks" if g.idle_timeout < left else f"{g.body_timeout:g} s"
            return await self.refuse(408, f"upload too slow: the body did not arrive within {limit}")
        if message["type"] == "http.request":
            self.read += len(message.get("body", b""))
            if self.read > g.max_body:
                g.stats.too_large += 1
                return await self.refuse(413, g.too_large_text)
            self.done = not message.get("more_body", False)
        return message

    async def refuse(self, status: int, detail: str) -> Message:
        """Answer ``status`` (unless the app already answered) and tell the app the client left."""
        self.refused = True
        if not self.started:
            self.started = True
            await respond(self._send, status, detail)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.refused:  # the guard answered; what the app makes of the disconnect is dropped
            return
        if message["type"] == "http.response.start":
            self.started = True
            if not self.done:
                message = {**message, "headers": [*message.get("headers", []), CLOSE]}
        await self._send(message)
