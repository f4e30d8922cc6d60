"""The batcher's lanes: a lone request gets every thread, batches under load run side by side on a
share of them, and a batch that must have the model alone (heatmaps) never overlaps another."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import png_bytes

from xrayfm.errors import XrayfmError
from xrayfm.serve.app import create_app, default_lanes
from xrayfm.serve.batcher import MicroBatcher
from xrayfm.serve.shared_lock import SharedLock


class Recorder:
    """A ``run_batch`` that sleeps, and records per batch its size, its thread, that thread's torch
    thread count and how many batches were running at its start and end."""

    def __init__(self, seconds: float = 0.15) -> None:
        self.seconds, self.running, self.batches, self.guard = seconds, 0, [], threading.Lock()

    def __call__(self, items: list) -> list:
        with self.guard:
            self.running += 1
            overlap = self.running
        time.sleep(self.seconds)
        with self.guard:
            overlap = max(overlap, self.running)
            self.running -= 1
            self.batches.append({"items": list(items), "thread": threading.current_thread().name,
                                 "threads": torch.get_num_threads(), "overlap": overlap})  # fmt: skip
        return [i * 10 for i in items]


def run(recorder: Recorder, groups: list[list[int]], gap: float = 0.0, **kwargs) -> list:
    """Submit each group of items at once, ``gap`` seconds apart; the answers in order."""

    async def main() -> list:
        batcher = MicroBatcher(recorder, max_batch=4, max_wait_ms=0, threads=2, **kwargs)
        batcher.start()
        try:
            tasks = []
            for group in groups:
                tasks += [asyncio.create_task(batcher.submit(i)) for i in group]
                await asyncio.sleep(gap)
            return await asyncio.gather(*tasks)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_a_lone_request_gets_every_thread() -> None:
    rec = Recorder(0.01)
    assert run(rec, [[1], [2]], gap=0.1, lanes=2, pending=lambda: 0) == [10, 20]
    assert [b["threads"] for b in rec.batches] == [2, 2]
    assert all(b["thread"].startswith("xrayfm-wide_") for b in rec.batches)


def test_batches_under_load_run_side_by_side_on_a_share_of_the_threads() -> None:
    rec = Recorder()
    # 12 requests at once, at most 4 a batch: the first batch holds 4, so narrow lanes from the start
    assert run(rec, [list(range(12))], lanes=2, pending=lambda: 0) == [i * 10 for i in range(12)]
    assert sorted(i for b in rec.batches for i in b["items"]) == list(range(12))
    assert max(b["overlap"] for b in rec.batches) == 2  # two at once, never more
    assert {b["threads"] for b in rec.batches} == {1}
    assert all(b["thread"].startswith("xrayfm-lane_") for b in rec.batches)


def test_one_lane_runs_every_batch_alone_on_all_threads() -> None:
    rec = Recorder(0.05)
    run(rec, [list(range(12))], lanes=1)
    assert max(b["overlap"] for b in rec.batches) == 1 and {b["threads"] for b in rec.batches} == {2}


def test_a_batch_that_needs_the_model_alone_never_overlaps_another() -> None:
    rec = Recorder(0.1)
    # negative items stand for heatmap requests; they arrive while plain batches are running
    run(rec, [[0, 1, 2, 3, 4, 5], [-1], [6, 7, 8], [-2, -3]], gap=0.03, lanes=2,
        exclusive=lambda items: any(i < 0 for i in items))  # fmt: skip
    alone = [b for b in rec.batches if any(i < 0 for i in b["items"])]
    assert alone and all(b["overlap"] == 1 and b["threads"] == 2 for b in alone)
    assert max(b["overlap"] for b in rec.batches) == 2  # the plain ones did share


def test_a_lone_job_runs_on_the_wide_lane_as_a_batch_of_one() -> None:
    """run_alone: the caller's whole job in one trip to the wide lane, counted as the batches are."""

    async def main() -> tuple:
        batcher = MicroBatcher(lambda items: items, threads=2, lanes=2)
        assert not batcher.idle()  # not started
        batcher.start()
        try:
            assert batcher.idle()
            ran = await batcher.run_alone(lambda: (threading.current_thread().name, torch.get_num_threads()))
            return ran, batcher.idle(), batcher.stats
        finally:
            await batcher.stop()

    (thread, threads), idle_after, stats = asyncio.run(main())
    assert thread.startswith("xrayfm-wide_") and threads == 2 and idle_after
    assert (stats.requests, stats.batches, stats.wide_batches, dict(stats.sizes)) == (1, 1, 1, {1: 1})


def test_requests_arriving_during_a_lone_job_wait_for_it_then_share_a_batch() -> None:
    rec = Recorder(0.05)

    async def main() -> tuple:
        batcher = MicroBatcher(rec, max_batch=4, max_wait_ms=0, threads=2, lanes=2, pending=lambda: 0)
        batcher.start()
        try:
            lone = asyncio.create_task(batcher.run_alone(lambda: rec([-1])))
            await asyncio.sleep(0.01)
            assert not batcher.idle()
            with pytest.raises(RuntimeError, match="idle batcher"):
                await batcher.run_alone(lambda: None)
            later = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
            return await lone, await asyncio.gather(*later)
        finally:
            await batcher.stop()

    lone, later = asyncio.run(main())
    assert lone == [-10] and later == [10, 20, 30]
    assert [b["items"] for b in rec.batches] == [[-1], [1, 2, 3]]  # after the lone job, together
    assert max(b["overlap"] for b in rec.batches) == 1


def test_a_batch_being_collected_keeps_the_batcher_from_running_a_lone_job() -> None:
    async def main() -> list[bool]:
        # one more upload is on its way: the first item waits up to 200 ms for it
        batcher = MicroBatcher(lambda items: items, max_batch=4, max_wait_ms=200, threads=2, pending=lambda: 1)
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(1))
            await asyncio.sleep(0.05)  # the worker holds it, waiting for company
            seen = [batcher.idle()]
            await first
            return [*seen, batcher.idle()]
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [False, True]


def test_a_cancelled_lone_caller_keeps_the_lanes_until_its_job_ends() -> None:
    started, release = threading.Event(), threading.Event()

    def job() -> str:
        started.set()
        release.wait(5)
        return "done"

    async def main() -> list[bool]:
        batcher = MicroBatcher(lambda items: items, threads=2, lanes=2)
        batcher.start()
        try:
            caller = asyncio.create_task(batcher.run_alone(job))
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
            caller.cancel()
            await asyncio.sleep(0.05)
            busy_while_running = not batcher.idle()
            release.set()
            for _ in range(100):
                if batcher.idle():
                    break
                await asyncio.sleep(0.01)
            return [caller.cancelled(), busy_while_running, batcher.idle()]
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [True, True, True]


def test_lanes_must_fit_the_threads() -> None:
    with pytest.raises(ValueError, match="lanes must be between 1 and the 2 threads"):
        MicroBatcher(lambda items: items, threads=2, lanes=3)
    assert default_lanes(torch.device("cpu"), 2) == 2 and default_lanes(torch.device("cpu"), 1) == 1
    assert default_lanes(torch.device("cuda"), 8) == 1


def test_the_app_refuses_more_lanes_than_threads(model_dir: Path) -> None:
    with pytest.raises(XrayfmError, match="--lanes must be between 1 and the"):
        create_app(model_dir, lanes=torch.get_num_threads() + 1)


def test_an_exclusive_holder_waits_for_shared_ones_and_goes_before_later_ones() -> None:
    lock, order = SharedLock(), []

    def shared(name: str, hold: float) -> None:
        with lock.shared():
            order.append(f"{name}+")
            time.sleep(hold)
            order.append(f"{name}-")

    def exclusive() -> None:
        with lock.exclusive():
            order.append("x+")
            time.sleep(0.05)
            order.append("x-")

    first = [threading.Thread(target=shared, args=(n, 0.2)) for n in ("a", "b")]
    for t in first:
        t.start()
    time.sleep(0.05)  # a and b hold it together
    waiting = threading.Thread(target=exclusive)
    waiting.start()
    time.sleep(0.05)
    late = threading.Thread(target=shared, args=("c", 0.0))  # comes after the waiting exclusive holder
    late.start()
    for t in [*first, waiting, late]:
        t.join()
    assert set(order[:2]) == {"a+", "b+"}
    assert order.index("x+") > max(order.index("a-"), order.index("b-"))
    assert order.index("c+") > order.index("x-")


def test_served_answers_do_not_depend_on_the_lane(model_dir: Path) -> None:
    """The same upload answered alone (wide lane) and among others (narrow lanes) gets the same probabilities."""
    app = create_app(model_dir, lanes=min(2, torch.get_num_threads()), max_batch=4)
    upload = {"file": ("x.png", png_bytes(), "image/png")}
    with TestClient(app) as c:
        alone = c.post("/predict", files=upload).json()["probabilities"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post("/predict", files=upload).json(), range(16)))
        health = c.get("/health").json()
    for answer in answers:
        assert np.allclose(list(answer["probabilities"].values()), list(alone.values()), atol=1e-5)
    assert health["lanes"] == min(2, torch.get_num_threads()) and health["wide_batches"] >= 1


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_the_servers_threads_carry_their_role_in_the_operating_system(model_dir: Path) -> None:
    """``top -H`` tells the model's lanes from the decoding threads: the lanes, their OpenMP workers and the
    codec threads are named in /proc."""

    def names() -> set[str]:
        return {(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()}

    with TestClient(create_app(model_dir, lanes=min(2, torch.get_num_threads()), max_batch=4)) as c:
        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(lambda _: c.post("/predict?heatmap=true", files={"file": ("x.png", png_bytes())}).is_success,
                                range(12)))  # fmt: skip
        running = names()
    assert {"xrayfm-wide", "xrayfm-codec"} <= running
    assert torch.get_num_threads() < 2 or "xrayfm-lane" in running
