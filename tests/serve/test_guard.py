"""The upload guard at the ASGI level: what it pulls from the server before refusing, and when.

A small FastAPI app with a multipart route stands for the model server (FastAPI parses the body
before the route runs, which is what the guard has to get ahead of); ``receive`` is scripted, so
the bytes the guard read are counted exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, File, UploadFile
from serve_helpers import BOUNDARY, part_head

from xrayfm.errors import XrayfmError
from xrayfm.serve.admission import Admission, Busy
from xrayfm.serve.guard import FRAMING, UploadGuard

LIMIT = 1 << 20
CHUNK = 65536


def guarded(*, token: str | None = "s3cret", body_timeout: float = 5.0, idle_timeout: float = 5.0,
            admission: Admission | None = None) -> FastAPI:  # fmt: skip
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)) -> dict:
        return {"size": len(await file.read())}

    app.add_middleware(UploadGuard, upload_paths=("/predict",), token=token, max_upload=LIMIT,
                       body_timeout=body_timeout, idle_timeout=idle_timeout,
                       admission=admission or Admission(max_decodes=2, queue_size=2, max_pixels=10**8, wait_s=1))  # fmt: skip
    return app


def drive(app: FastAPI, path: str, body: Iterator[bytes], *, headers: dict[str, str] | None = None,
          delay_s: float = 0.0) -> tuple[list[dict], int]:  # fmt: skip
    """Run one request through ``app``; returns the messages it sent and the body bytes it pulled."""
    sent: list[dict] = []
    pulled = 0
    sentinel = object()

    async def receive() -> dict:
        nonlocal pulled
        if delay_s:
            await asyncio.sleep(delay_s)
        piece = next(body, sentinel)
        if piece is sentinel:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    head = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "transfer-encoding": "chunked",
            **(headers or {})}  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000),
             "headers": [(k.encode(), v.encode()) for k, v in head.items()]}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return sent, pulled


def answer(sent: list[dict]) -> tuple[int, dict[bytes, bytes]]:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return starts[0]["status"], dict(starts[0]["headers"])


def endless() -> Iterator[bytes]:
    return itertools.chain([part_head()], itertools.repeat(b"\0" * CHUNK))


TOKEN = {"authorization": "Bearer s3cret"}


def test_token_is_checked_before_any_body_byte() -> None:
    sent, pulled = drive(guarded(), "/predict", endless())
    status, headers = answer(sent)
    assert status == 401 and pulled == 0 and headers[b"connection"] == b"close"
    sent, pulled = drive(guarded(), "/predict", endless(), headers={"authorization": "Bearer wrong"})
    assert answer(sent)[0] == 401 and pulled == 0


def test_streamed_body_is_cut_at_the_limit() -> None:
    sent, pulled = drive(guarded(), "/predict", endless(), headers=TOKEN)
    status, headers = answer(sent)
    assert status == 413 and headers[b"connection"] == b"close"
    assert LIMIT < pulled <= LIMIT + FRAMING + CHUNK


def test_declared_length_over_the_limit_is_refused_unread() -> None:
    sent, pulled = drive(guarded(), "/predict", endless(), headers={**TOKEN, "content-length": str(2 * LIMIT)})
    assert answer(sent)[0] == 413 and pulled == 0


def test_a_body_within_the_limit_reaches_the_app() -> None:
    body = iter([part_head(), b"\1" * 1000, f"\r\n--{BOUNDARY}--\r\n".encode()])
    sent, _ = drive(guarded(), "/predict", body, headers=TOKEN)
    assert answer(sent)[0] == 200 and b'{"size":1000}' in sent[-1]["body"]


def test_gap_between_chunks_and_total_time_are_bounded() -> None:
    t0 = time.monotonic()
    sent, _ = drive(guarded(idle_timeout=0.2), "/predict", endless(), headers=TOKEN, delay_s=0.4)
    status, headers = answer(sent)
    assert status == 408 and headers[b"connection"] == b"close" and time.monotonic() - t0 < 2
    trickle = itertools.chain([part_head()], itertools.repeat(b"\0"))
    t0 = time.monotonic()
    sent, pulled = drive(guarded(body_timeout=0.5, idle_timeout=0.2), "/predict", trickle, headers=TOKEN,
                         delay_s=0.05)  # fmt: skip
    assert answer(sent)[0] == 408 and 0.5 <= time.monotonic() - t0 < 2 and pulled < 200


def test_no_free_slot_answers_503_before_the_body() -> None:
    admission = Admission(max_decodes=1, queue_size=0, max_pixels=10**8, wait_s=1)
    assert admission.enter()
    sent, pulled = drive(guarded(admission=admission), "/predict", endless(), headers=TOKEN)
    status, headers = answer(sent)
    assert status == 503 and headers[b"retry-after"] == b"1" and pulled == 0
    assert admission.stats.busy == 1
    admission.leave()
    body = iter([part_head(), b"\1" * 10, f"\r\n--{BOUNDARY}--\r\n".encode()])
    assert answer(drive(guarded(admission=admission), "/predict", body, headers=TOKEN)[0])[0] == 200
    assert admission.stats.in_flight == 0


def test_an_answer_before_the_body_ends_closes_the_connection() -> None:
    sent, pulled = drive(guarded(), "/nothing-here", endless())
    status, headers = answer(sent)
    assert status == 404 and headers[b"connection"] == b"close" and pulled == 0


def test_decodes_wait_their_turn_within_the_pixel_budget() -> None:
    async def run() -> tuple[list[str], int]:
        admission = Admission(max_decodes=3, queue_size=4, max_pixels=100, wait_s=2)
        order: list[str] = []

        async def decode(name: str, pixels: int, hold: float) -> None:
            async with admission.decode_slot(), admission.pixels(pixels):
                order.append(name)
                await asyncio.sleep(hold)

        await asyncio.gather(decode("a", 60, 0.2), decode("b", 60, 0.0), decode("c", 30, 0.0))
        return order, admission.stats.peak_pixels_decoding

    order, peak = asyncio.run(run())
    assert order == ["a", "b", "c"] and peak <= 100  # b waits for a; c, though it would fit, waits its turn


def test_decode_slots_are_bounded() -> None:
    async def run() -> int:
        admission = Admission(max_decodes=2, queue_size=4, max_pixels=100, wait_s=2)
        most = 0

        async def decode() -> None:
            nonlocal most
            async with admission.decode_slot():
                most = max(most, admission.stats.decoding)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(decode() for _ in range(6)))
        return most

    assert asyncio.run(run()) == 2


def test_an_upload_that_cannot_get_room_in_time_is_busy() -> None:
    async def run() -> None:
        admission = Admission(max_decodes=1, queue_size=1, max_pixels=100, wait_s=0.1)
        async with admission.decode_slot():
            with pytest.raises(Busy):
                async with admission.decode_slot():
                    pass
        async with admission.pixels(95):
            with pytest.raises(Busy):
                async with admission.pixels(10):
                    pass
        assert admission.stats.busy == 2 and admission.stats.decoding == 0
        async with admission.decode_slot(), admission.pixels(100):  # slot and budget came back
            pass

    asyncio.run(run())


def test_admission_bounds_must_be_positive() -> None:
    with pytest.raises(XrayfmError, match="positive"):
        Admission(max_decodes=0, queue_size=1, max_pixels=1, wait_s=1)
