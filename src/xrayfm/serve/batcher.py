"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests wait in a bounded queue; one worker takes up to ``max_batch`` of them, runs them
together on the model's own thread (never queued behind decodes in the shared pool) so the event
loop stays free, and hands each caller its own result, or its own error: one failed request of
a batch does not fail the others. A full queue is refused at once (the app answers 503) instead
of letting memory grow under overload.

Every PyTorch call of the server runs on that one model thread (:meth:`MicroBatcher.call` for the
work around the model, such as laying maps onto the image): with OpenMP, each thread that runs a
parallel op keeps its own team of worker threads, and once the teams outnumber the cores their
threads stop spinning between parallel regions and sleep, so every op pays a wake-up. One decode
thread resizing an upload with torch made a ViT-Ti/16 forward pass on 2 cores 2.2x slower (40 vs 18 ms).

The worker takes every request already waiting, and waits up to ``max_wait_ms`` for more only
while ``pending()`` says more are on their way: a lone request is never held back for company
that cannot come, while requests arriving during a forward pass form the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The batcher's queue is full; the caller should retry later."""


@dataclass
class BatchStats:
    """Counters for ``/health``."""

    requests: int = 0
    batches: int = 0
    rejected: int = 0
    largest_batch: int = 0
    started: float = field(default_factory=time.time)


class MicroBatcher:
    """Collects single items into batches for ``run_batch``.

    Args:
        run_batch: Maps a list of items to a list of results (same order); a result that is an
            exception is raised to that item's caller alone. Runs on the batcher's own thread.
        max_batch: Most items per batch.
        max_wait_ms: How long the first item of a batch may wait for company.
        queue_size: Most items waiting; more are refused with :class:`QueueFull`.
        pending: How many more items are on their way (e.g. uploads being decoded); the batch
            waits for company only while it is positive. Default: always wait up to ``max_wait_ms``.
    """

    def __init__(
        self, run_batch: Callable[[Sequence[Any]], list[Any]], *, max_batch: int = 8, max_wait_ms: float = 5.0,
        queue_size: int = 64, pending: Callable[[], int] | None = None,
    ) -> None:  # fmt: skip
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.pending = pending or (lambda: 1)
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue(maxsize=queue_size)
        self.stats = BatchStats()
        self._worker: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="xrayfm-model")
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker; waiting callers get a cancellation."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    async def submit(self, item: Any) -> Any:
        """Queue ``item`` and wait for its result.

        Raises:
            QueueFull: Too many requests are already waiting.
        """
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise QueueFull from None
        self.stats.requests += 1
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run on the model's thread, after the batches already handed to it.

        Raises:
            RuntimeError: The batcher is not started.
        """
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        """The next batch: the first item, all others already waiting, and those arriving within
        ``max_wait`` while ``pending()`` says more are coming."""
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.pending() <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            live = [(item, fut) for item, fut in await self._collect() if not fut.done()]
            if not live:
                continue
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            try:
                results = await loop.run_in_executor(self._thread, self.run_batch, [item for item, _ in live])
            except Exception as exc:  # handed to each caller; the worker keeps serving
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
