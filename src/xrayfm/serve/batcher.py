"""Dynamic micro-batching: concurrent requests share one forward pass, and under load batches run side by side.

Requests wait in a bounded queue; the worker takes up to ``max_batch`` of them and runs them
together on a model thread (never queued behind decodes in the shared pool) so the event loop
stays free, and hands each caller its own result, or its own error: one failed request of a batch
does not fail the others. A full queue is refused at once (the app answers 503) instead of
letting memory grow under overload.

Lanes: the model's ``threads`` (its intra-op threads) are either one *wide* lane, a batch using
all of them, or ``lanes`` *narrow* lanes of ``threads // lanes`` each, running batches at the same
time. A lone request (a batch of one, with nothing else running, waiting or being decoded) takes the wide lane: its
latency is that of the model with every core. Under load batches take narrow lanes: a pass that loses its
core to an upload's decoding for a moment no longer holds a second thread waiting for it at every
op's barrier. Measured on 2 cores, paired (``bench/serve_lanes.py``), two lanes served 1.18-1.25x
the requests/s of one at 16 clients for EVA-X Ti/16 and for S/16 on ONNX Runtime, and no more for
S/16 on PyTorch. A batch that must have the model
alone (``exclusive``: a heatmap pass hooks the model) waits for the others and takes the wide lane.

Every PyTorch call of the server runs on these lane threads (:meth:`MicroBatcher.call` for the
work around the model, such as laying maps onto the image): with OpenMP, each thread that runs a
parallel op keeps its own team of worker threads, and once the teams outnumber the cores their
threads stop spinning between parallel regions and sleep, so every op pays a wake-up. One decode
thread resizing an upload with torch made a ViT-Ti/16 forward pass on 2 cores 2.2x slower (40 vs 18 ms).
Each lane thread sets its own thread count once (``set_threads``), so the teams never add up to
more threads than ``threads``.

The worker takes every request already waiting, and waits up to ``max_wait_ms`` for more only
while ``pending()`` says more are on their way: a lone request is never held back for company
that cannot come, while requests arriving during a forward pass form the next batch.

A lone request can skip the queue altogether (:meth:`MicroBatcher.run_alone`): when nothing is running,
waiting or being collected, the caller's whole job (the server's: decode the upload, prepare it, run
the model) goes to the wide lane in one trip, a batch of one. On 2 cores each trip between threads and
the event loop costs a wake-up; the queue path makes four for a request (to a decoding thread and back,
to the model thread and back), this one two.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from xrayfm.serve.thread_names import name_this_thread

#: The operating-system names of the lane threads (:mod:`xrayfm.serve.thread_names`).
WIDE_NAME, NARROW_NAME = "xrayfm-wide", "xrayfm-lane"


def lane_threads(threads: int, lanes: int) -> tuple[int, int]:
    """The wide lane's thread count and each narrow lane's, for ``threads`` in all split into ``lanes``.

    Raises:
        ValueError: ``lanes`` below 1 or above ``threads``.
    """
    if not 1 <= lanes <= threads:
        raise ValueError(f"lanes must be between 1 and the {threads} threads, got {lanes}")
    return threads, threads // lanes


class QueueFull(Exception):
    """The batcher's queue is full; the caller should retry later."""


@dataclass
class BatchStats:
    """Counters for ``/health``."""

    requests: int = 0
    batches: int = 0
    wide_batches: int = 0
    rejected: int = 0
    largest_batch: int = 0
    #: Batches run per batch size: what the load formed, to tune ``max_batch`` and ``max_wait_ms`` by, and
    #: the sizes a raw engine must be timed at to be compared with the server (``bench/serve_latency.py``).
    sizes: Counter[int] = field(default_factory=Counter)
    started: float = field(default_factory=time.time)


class MicroBatcher:
    """Collects single items into batches for ``run_batch`` and runs them on its lanes.

    Args:
        run_batch: Maps a list of items to a list of results (same order); a result that is an
            exception is raised to that item's caller alone. Runs on a lane thread, on several at
            once when ``lanes`` > 1.
        max_batch: Most items per batch.
        max_wait_ms: How long the first item of a batch may wait for company.
        queue_size: Most items waiting; more are refused with :class:`QueueFull`.
        pending: How many more items are on their way (e.g. uploads being decoded); the batch
            waits for company only while it is positive. Default: always wait up to ``max_wait_ms``.
        threads: The model's intra-op threads in all (default: what the process has now).
        lanes: Most batches run at once under load (1: every batch runs alone on all ``threads``).
        set_threads: Called once on each lane thread with that lane's thread count, before its
            first batch (default: ``torch.set_num_threads``).
        exclusive: Whether a batch must have the model alone (it then waits for the running ones
            and takes the wide lane). Default: never.

    Raises:
        ValueError: ``threads`` or ``lanes`` below 1, or more lanes than threads.
    """

    def __init__(
        self, run_batch: Callable[[Sequence[Any]], list[Any]], *, max_batch: int = 8, max_wait_ms: float = 5.0,
        queue_size: int = 64, pending: Callable[[], int] | None = None, threads: int | None = None, lanes: int = 1,
        set_threads: Callable[[int], None] | None = None, exclusive: Callable[[Sequence[Any]], bool] | None = None,
    ) -> None:  # fmt: skip
        self.threads, self.narrow_threads = lane_threads(threads or torch.get_num_threads(), lanes)
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.lanes = lanes
        self.pending = pending or (lambda: 1)
        self.set_threads = set_threads or torch.set_num_threads
        self.exclusive = exclusive or (lambda _: False)
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future]] = asyncio.Queue(maxsize=queue_size)
        self.stats = BatchStats()
        self._worker: asyncio.Task | None = None
        self._wide: ThreadPoolExecutor | None = None
        self._narrow: ThreadPoolExecutor | None = None
        self._running: set[asyncio.Task] = set()
        self._busy = 0  # lanes taken by the batches running (the wide lane takes them all)
        self._held = 0  # items taken from the queue by the worker and not yet running
        #: Lone jobs running now (:meth:`run_alone`): not among the items ``pending`` counts as on their way.
        self.alone_running = 0
        self._changed: asyncio.Condition | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._wide = ThreadPoolExecutor(1, WIDE_NAME, self._lane_start, (WIDE_NAME, self.threads))
            if self.lanes > 1:
                self._narrow = ThreadPoolExecutor(self.lanes, NARROW_NAME, self._lane_start,
                                                  (NARROW_NAME, self.narrow_threads))  # fmt: skip
            self._changed = asyncio.Condition()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    def _lane_start(self, name: str, threads: int) -> None:
        """A lane thread's first act: its name in the operating system, then its thread count (so the
        OpenMP workers it starts carry the name too)."""
        name_this_thread(name)
        self.set_threads(threads)

    async def stop(self) -> None:
        """Stop the worker; waiting callers get a cancellation."""
        for task in [self._worker, *self._running]:
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._worker, self._running = None, set()
        for pool in (self._wide, self._narrow):
            if pool is not None:
                pool.shutdown(wait=False)
        self._wide = self._narrow = None

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

    def idle(self) -> bool:
        """Whether nothing is running, queued or being collected into a batch: a request now is a lone one."""
        return self._worker is not None and self._busy == 0 and self._held == 0 and self.queue.empty()

    async def run_alone(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the wide lane, counted as a batch of one; call it only when :meth:`idle` is true,
        with no ``await`` in between (the lanes are taken at once). Cancelling the caller does not give
        the lanes back before ``fn`` has ended.

        Raises:
            RuntimeError: The batcher is busy or not started.
        """
        if not self.idle():
            raise RuntimeError("run_alone needs an idle batcher")
        self._busy = self.lanes
        self.alone_running += 1
        self.stats.requests += 1
        self._count_batch(1, wide=True)
        task = asyncio.get_running_loop().create_task(self._alone(fn))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _alone(self, fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._wide, fn)
        finally:
            self.alone_running -= 1
            await self._give(self.lanes)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` run on a lane thread (a narrow one where there are: light work such as laying a
        map onto the image needs no more than one thread).

        Raises:
            RuntimeError: The batcher is not started.
        """
        pool = self._narrow or self._wide
        if pool is None:
            raise RuntimeError("the batcher is not started")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        """The next batch: the first item, all others already waiting, and those arriving within
        ``max_wait`` while ``pending()`` says more are coming."""
        batch = [await self.queue.get()]
        self._held = 1
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                self._held += 1
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.pending() <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                self._held += 1
            except asyncio.TimeoutError:
                break
        return batch

    def _count_batch(self, size: int, wide: bool) -> None:
        """A batch of ``size`` starting, on the wide lane or not, in the counters of ``/health``."""
        self.stats.batches += 1
        self.stats.wide_batches += wide
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        self.stats.sizes[size] += 1

    async def _take(self, lanes: int) -> None:
        """Wait until ``lanes`` lanes are free, and take them."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._busy + lanes <= self.lanes)
            self._busy += lanes

    async def _give(self, lanes: int) -> None:
        async with self._changed:
            self._busy -= lanes
            self._changed.notify_all()

    async def _work(self) -> None:
        while True:
            async with self._changed:  # collect only when a lane is free: meanwhile the next batch grows
                await self._changed.wait_for(lambda: self._busy < self.lanes)
            live = [(item, fut) for item, fut in await self._collect() if not fut.done()]
            if not live:
                self._held = 0
                continue
            items = [item for item, _ in live]
            alone = len(live) == 1 and self._busy == 0 and self.queue.empty() and self.pending() <= 0
            wide = self.lanes == 1 or alone or self.exclusive(items)
            taken = self.lanes if wide else 1
            await self._take(taken)
            self._held = 0
            self._count_batch(len(live), wide)
            task = asyncio.get_running_loop().create_task(self._run(live, self._wide if wide else self._narrow, taken))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, live: list[tuple[Any, asyncio.Future]], pool: ThreadPoolExecutor, taken: int) -> None:
        """One batch on ``pool``; each caller gets its result or error, and the lanes are given back."""
        try:
            results = await asyncio.get_running_loop().run_in_executor(pool, self.run_batch, [i for i, _ in live])
        except Exception as exc:  # handed to each caller; the worker keeps serving
            results = [exc] * len(live)
        finally:
            await self._give(taken)
        for (_, fut), result in zip(live, results):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)
