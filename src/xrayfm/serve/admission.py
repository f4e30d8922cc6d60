"""Admission control: how many uploads the server holds, and how many pixels it decodes, at once.

An upload request takes a slot before its body is read (``max_requests``: the decodes allowed in
flight plus the requests allowed to wait); without a free slot it is answered 503 at once, so an
overloaded server never reads nor decodes what it will refuse. An admitted upload then waits,
first come first served, for a decode slot (``max_decodes``; only then are its bytes read into
memory and its header probed) and for its declared pixels to fit the pixel budget
(``max_pixels``); if either takes longer than ``wait_s`` it is answered 503 too. Memory held by
uploads is so bounded by the slots, the decode slots times the upload limit, and the pixel budget
times the decoder's bytes per pixel, whatever the traffic.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from xrayfm.errors import XrayfmError

#: Bytes a decoder holds at its peak per declared pixel, with a margin: one 100 MP PNG at a time takes
#: about 1 (8-bit) and 2 (16-bit; bench/serve_soak.py records both), two decoding at once somewhat more.
DECODE_BYTES_PER_PIXEL = 4.5
#: What an upload waiting for a decode slot keeps in memory: Starlette spools the rest of it to disk.
SPOOL_BYTES = 1 << 20


class Busy(Exception):
    """No room for this upload now; the caller answers 503 with ``Retry-After``."""


@dataclass
class AdmissionStats:
    """Counters for ``/health``: uploads admitted, refused as busy, and what is held now."""

    admitted: int = 0
    busy: int = 0
    in_flight: int = 0
    decoding: int = 0
    pixels_decoding: int = 0
    peak_pixels_decoding: int = 0


class Admission:
    """Slots for upload requests, decode slots and a pixel budget.

    Args:
        max_decodes: Most uploads read into memory and decoded at the same time.
        queue_size: Most admitted uploads beyond those decoding (reading their body, waiting to
            decode or for the model).
        max_pixels: Most declared pixels (width x height) of the images being decoded at once;
            at least the largest image the read limits accept, so every accepted image fits.
        wait_s: Longest wait for a decode slot and pixel budget before answering 503.

    Raises:
        XrayfmError: A bound is not positive.
    """

    def __init__(self, *, max_decodes: int, queue_size: int, max_pixels: int, wait_s: float) -> None:
        if max_decodes < 1 or queue_size < 0 or max_pixels < 1 or wait_s < 0:
            raise XrayfmError(
                f"admission bounds must be positive: max_decodes={max_decodes}, queue_size={queue_size}, "
                f"max_pixels={max_pixels}, wait_s={wait_s}"
            )
        self.max_decodes, self.max_pixels, self.wait_s = max_decodes, max_pixels, wait_s
        self.max_requests = max_decodes + queue_size
        self.stats = AdmissionStats()
        self._slots = asyncio.Semaphore(max_decodes)
        self._turns: deque[object] = deque()
        self._changed = asyncio.Condition()

    def memory_bound(self, max_upload: int) -> int:
        """Most bytes uploads can hold at once beyond the idle server and the model's own work: the
        spooled part of every admitted upload, the bytes of those decoding, and the decoders' pixels.

        Args:
            max_upload: Largest upload in bytes.
        """
        return (
            self.max_requests * SPOOL_BYTES
            + self.max_decodes * max_upload
            + int(DECODE_BYTES_PER_PIXEL * self.max_pixels)
        )

    def enter(self) -> bool:
        """Take a request slot if one is free (no waiting); False means answer 503."""
        if self.stats.in_flight >= self.max_requests:
            self.stats.busy += 1
            return False
        self.stats.in_flight += 1
        self.stats.admitted += 1
        return True

    def leave(self) -> None:
        """Give back the slot taken by :meth:`enter`."""
        self.stats.in_flight -= 1

    def _fits(self, turn: object, pixels: int) -> bool:
        return self._turns[0] is turn and self.stats.pixels_decoding + pixels <= self.max_pixels

    def _busy(self, what: str) -> Busy:
        self.stats.busy += 1
        return Busy(f"server busy: no room to decode {what} within {self.wait_s:g} s")

    @asynccontextmanager
    async def decode_slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_decodes`` decode slots for the body of the ``async with``.

        Raises:
            Busy: No slot came free within ``wait_s``.
        """
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise self._busy("this upload") from None
        self.stats.decoding += 1
        try:
            yield
        finally:
            self.stats.decoding -= 1
            self._slots.release()

    @asynccontextmanager
    async def pixels(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` of the pixel budget for the body of the ``async with`` (first come, first served).

        Raises:
            Busy: The budget did not have room within ``wait_s``.
        """
        turn = object()
        async with self._changed:
            self._turns.append(turn)
            try:
                async with asyncio.timeout(self.wait_s):
                    await self._changed.wait_for(lambda: self._fits(turn, pixels))
            except TimeoutError:
                raise self._busy(f"{pixels:,} pixels") from None
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()
            s = self.stats
            s.pixels_decoding += pixels
            s.peak_pixels_decoding = max(s.peak_pixels_decoding, s.pixels_decoding)
        try:
            yield
        finally:
            async with self._changed:
                self.stats.pixels_decoding -= pixels
                self._changed.notify_all()
