"""The training loop's batches stop their loader's worker processes when closed: the workers ignore SIGTERM, so
Python's exit could not end one left running, and an error raised in a worker leaves them running (PyTorch's
own clean-up runs from a reference cycle, after the loader's queues are gone)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.data.shards import build_shards
from xrayfm.errors import ImageReadError, own_message
from xrayfm.train.batches import LoaderBatches, stop_workers
from xrayfm.train.checkpoint import quiet_worker
from xrayfm.train.streaming import SeededShards, StreamBatches


class Numbers(Dataset):
    """Item i is tensor([i]); item ``bad`` raises as a damaged image does."""

    def __init__(self, n: int = 40, bad: int | None = None) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.bad:
            raise ImageReadError(f"image{i}.png: truncated")
        return torch.tensor([i])


@pytest.fixture
def live_workers() -> Callable[[], list[multiprocessing.Process]]:
    """The child processes started during the test and still running (not those other tests left)."""
    others = {p.pid for p in multiprocessing.active_children()}
    return lambda: [p for p in multiprocessing.active_children() if p.is_alive() and p.pid not in others]


def _loader(dataset: Dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=2, num_workers=1, worker_init_fn=quiet_worker)


def test_closing_stops_the_workers_and_ends_the_batches(live_workers: Callable) -> None:
    batches = LoaderBatches(_loader(Numbers()), to_device=lambda b: b * 10)
    assert torch.equal(next(batches), torch.tensor([[0], [10]])) and live_workers()
    batches.close()
    assert not live_workers()
    with pytest.raises(StopIteration):
        next(batches)


def test_an_error_raised_in_a_worker_leaves_no_worker_behind(live_workers: Callable) -> None:
    with pytest.raises(ImageReadError) as caught, closing(LoaderBatches(_loader(Numbers(bad=3)))) as batches:
        list(batches)
    assert not live_workers()
    told = own_message(caught.value)  # not PyTorch's "Caught ... in DataLoader worker" with the worker's traceback
    assert told.startswith("image3.png: truncated; list every file") and "xrayfm inspect ROOT --check -1" in told


def test_without_closing_the_worker_outlives_the_error(live_workers: Callable) -> None:
    # what the closing is for: PyTorch's own clean-up does not stop this worker (it ignores SIGTERM)
    batches = LoaderBatches(_loader(Numbers(bad=3)))
    with pytest.raises(ImageReadError):
        list(batches)
    try:
        assert live_workers()
    finally:
        batches.close()
    assert not live_workers()


def test_stop_workers_takes_iterators_without_workers() -> None:
    stop_workers(None)
    stop_workers(iter(DataLoader(Numbers(), batch_size=2)))  # one process: nothing to stop


def test_a_stream_stops_its_epochs_workers(tmp_path: Path, live_workers: Callable) -> None:
    data = write_phantom_dataset(tmp_path / "phantom", n=12, seed=0, size=32)
    build_shards([f"phantom:{data}"], tmp_path / "shards", size=32, resize="square", part_size=4, chunk_mb=0.002)
    stream = SeededShards(tmp_path / "shards", "train", seed=0)
    batches = StreamBatches(
        stream, batch_size=2, num_workers=1, collate_fn=collate_samples, worker_init_fn=quiet_worker
    )
    assert next(batches)["image"].shape[0] == 2 and live_workers()
    batches.close()
    assert not live_workers()


@pytest.mark.parametrize(
    ("message", "kind", "own"),
    [
        ("a.png: truncated", ImageReadError, "a.png: truncated"),
        (
            "Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\nxrayfm.errors.ImageReadError: a.png: truncated\n',
            ImageReadError,
            "a.png: truncated",
        ),
        (
            "Caught OSError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\nOSError: [Errno 5] Input/output error\n',
            OSError,
            "[Errno 5] Input/output error",
        ),
        ("Caught OSError in DataLoader worker process 1.\nno traceback", OSError, None),
    ],
)
def test_own_message_keeps_what_was_raised_in_the_worker(message: str, kind: type, own: str | None) -> None:
    assert own_message(kind(message)) == (message if own is None else own)
