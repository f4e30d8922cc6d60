"""The HTTP/1.1 protocol ``xrayfm serve`` runs in uvicorn: httptools' C parser with a bound on request heads.

uvicorn's pure-Python h11 protocol bounds a request's head (``h11_max_incomplete_event_size``), but
httptools (llhttp, Node's parser) takes less server CPU per request (``bench/http_parsers.py``
measures both on a bare upload endpoint; README, "Security and limits"). httptools has no head
limit of its own, and it joins a header's pieces in memory until the header ends, so a client
trickling one endless header would grow the server's memory without bound. :class:`BoundedHttpToolsProtocol`
adds the bound: the bytes a head has taken so far, counted as they arrive, may not pass ``max_head``
(and a complete head, URL and headers, neither); beyond it the answer is 400 and the connection is
closed, as h11's limit does. Memory held for one head stays below ``max_head`` plus one read
(256 KiB).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Default bound on a request head (request line and headers), as ``xrayfm serve`` sets it.
MAX_HEAD_BYTES = 16_384
HEAD_TOO_LARGE = "Request head (URL and headers) too large."


class HeadTooLarge(Exception):
    """A complete request head is larger than the bound (raised inside the parser's callback)."""


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of a parsed head: the URL and each header as ``name: value\\r\\n``."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol refusing request heads over :attr:`max_head` bytes (400, connection closed)."""

    max_head = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False  # inside a head (a message began, its headers are not complete): its bytes count
        self._began = False  # a message began in the chunk being fed
        self._head_bytes = 0
        self._too_large = False

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(HEAD_TOO_LARGE if self._too_large else msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._began = True, True

    def on_headers_complete(self) -> None:
        if head_size(self.url, self.headers) > self.max_head:
            self._too_large = True
            raise HeadTooLarge  # httptools turns it into a parser error: uvicorn answers 400 and closes
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # a head still incomplete: what it has taken so far. The chunk that began it may also hold the end of the
        # previous message, so there count the head's parsed pieces (the piece being joined is within this chunk)
        self._head_bytes = head_size(self.url, self.headers) if self._began else self._head_bytes + len(data)
        if self._head_bytes > self.max_head:
            self._too_large = True
            self.send_400_response(HEAD_TOO_LARGE)
