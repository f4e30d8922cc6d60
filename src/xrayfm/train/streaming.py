"""Training from LitData streams (xrayfm shards): the engine's loader for a ``StreamingDataset``, resumable mid-epoch.

A map-style dataset is read by the engine in the order of :class:`~xrayfm.train.sampler.StepSampler`;
a ``litdata.StreamingDataset`` (such as :class:`~xrayfm.data.shard_format.ShardDataset`) is read
sequentially, chunk by chunk, by ``litdata.StreamingDataLoader``, which shuffles (chunks, then
samples within a window), shards the chunks over ranks and loader workers, and records how far each
has read (``state_dict``). :class:`StreamBatches` cycles that loader epoch after epoch and hands the
engine its state, which the engine keeps in every checkpoint (``loader``) and gives back on resume:
a killed run then reads the same remaining samples as an uninterrupted one.

Epochs and ``drop_last``. LitData deals each rank and worker whole batches only when ``drop_last``
is on (it turns it on by itself under DDP); then every rank has the same number of batches per
epoch, so all ranks stay in step, rank 0's loader state is every rank's, and an epoch is
:func:`stream_length` samples per rank. The samples past the last whole batch of a rank and worker
are skipped in that epoch (with shuffling, different ones each epoch), as ``StepSampler`` skips the
tail that does not divide over the ranks: every sample is read exactly once per epoch across ranks
when the dataset divides into ``world x workers x batch_size`` (see LitData's interval assignment),
and at most once otherwise.

Random augmentations replay on resume when the RNGs are seeded by the sample, not by the worker:
:class:`SeededShards` seeds them before reading each sample from the run's seed, the epoch and the
sample's index.

Training commands open their ``DATASET ROOT`` with :func:`open_dataset`, the one place where the
name ``shards`` selects a shard folder over an adapter: a stream to train on, or a
:class:`ShardSplit` read by index to validate on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from litdata.utilities.env import _DistributedEnv
from torch.utils.data import Dataset, default_collate

from xrayfm.data.base import XrayDataset
from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import Sample
from xrayfm.data.shard_format import ShardDataset
from xrayfm.errors import XrayfmError
from xrayfm.train.batches import stop_workers
from xrayfm.train.seeding import seed_sample


def is_stream(dataset: Any) -> bool:
    """True for a LitData ``StreamingDataset``, which the engine reads with :class:`StreamBatches`."""
    return isinstance(dataset, StreamingDataset)


def stream_length(dataset: StreamingDataset, *, batch_size: int, num_workers: int) -> int:
    """Samples of one epoch on this rank, with ``drop_last`` (see the module docstring).

    Re-detects the processes first (the dataset may have been made before Fabric launched them),
    so the length and the order follow the run's world size.

    Args:
        dataset: The stream.
        batch_size: Samples per batch on each rank.
        num_workers: Loader workers on each rank.

    Returns:
        Samples this rank reads per epoch, a multiple of ``batch_size``.

    Raises:
        XrayfmError: Fewer samples than one batch per rank and worker.
    """
    dataset.distributed_env = _DistributedEnv.detect()
    dataset.shuffler = None  # built again for this world size and drop_last
    dataset.set_drop_last(True)
    n = dataset.get_len(num_workers, batch_size)
    if n < batch_size:
        world = dataset.distributed_env.world_size
        raise XrayfmError(
            f"{dataset.input_dir.path or dataset.input_dir.url}: too few samples for one batch of {batch_size} on each "
            f"of {world} processes x {max(num_workers, 1)} workers; lower --batch or --workers"
        )
    return n


class _StreamLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` that keeps the iterator of its current epoch, whose workers
    :meth:`StreamBatches.close` stops (LitData's ``__iter__`` wraps it in a generator of its own)."""

    current: Iterator[Any] | None = None

    def _get_iterator(self) -> Any:
        self.current = super()._get_iterator()
        return self.current


class StreamBatches(Iterator[Any]):
    """Endless batches of a ``StreamingDataLoader``, epoch after epoch, and its state for checkpoints.

    Args:
        dataset: The stream (after :func:`stream_length`).
        batch_size: Samples per batch.
        num_workers: Loader workers.
        collate_fn: Batch collation (default: PyTorch's).
        to_device: Applied to each batch (e.g. ``Fabric.to_device``).
        state: A loader state from :meth:`state_dict` (a checkpoint's), to continue from; empty = from the start.
        worker_init_fn: The loader workers' init function.
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        *,
        batch_size: int,
        num_workers: int,
        collate_fn: Callable | None = None,
        to_device: Callable[[Any], Any] = lambda batch: batch,
        state: dict[str, Any] | None = None,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        self.loader = _StreamLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn or default_collate,
            drop_last=True, worker_init_fn=worker_init_fn,
        )  # fmt: skip
        if state:
            self.loader.load_state_dict(state)
        self._to_device = to_device
        self._iterator = iter(self.loader)

    def __next__(self) -> Any:
        for _ in range(2):  # a resumed epoch may have no batch left: then the next epoch starts
            try:
                return self._to_device(next(self._iterator))
            except StopIteration:
                self._iterator = iter(self.loader)
        raise XrayfmError("the stream gave no batch in a whole epoch; check the shards with xrayfm shards inspect")

    def state_dict(self) -> dict[str, Any]:
        """The loader's state after the batches handed out so far (LitData's, plain values only)."""
        return self.loader.state_dict()

    def close(self) -> None:
        """Stop the current epoch's loader workers (see :mod:`xrayfm.train.batches`); the batches end here."""
        stop_workers(self.loader.current)
        self.loader.current = None


class SeededShards(ShardDataset):
    """A :class:`~xrayfm.data.shard_format.ShardDataset` whose random transforms replay on resume.

    Before reading each sample it seeds Python's, NumPy's and torch's RNGs from ``seed``, the epoch
    and the sample's index (:func:`~xrayfm.train.seeding.seed_sample`), so an augmentation depends on
    which sample is read in which epoch, not on the loader worker or where a run resumed.

    Args:
        out: The shard folder.
        split: The split.
        seed: The run's seed (also LitData's shuffle seed).
        **kwargs: Further :class:`~xrayfm.data.shard_format.ShardDataset` arguments.

    Attributes:
        total: Samples in the split (``len`` of a stream is one rank's share of an epoch).
    """

    def __init__(self, out: str | Path, split: str = "train", *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(out, split, seed=seed, **kwargs)
        self.total = int(self.manifest["counts"][split]["total"])

    def __getitem__(self, index: Any) -> Sample:
        if isinstance(index, ChunkedIndex):  # what the stream reads: index.index is the sample's global index
            seed_sample(self.seed, 0, self.current_epoch * self.total + index.index)
        return super().__getitem__(index)


#: The ``DATASET`` name under which training commands read a shard folder (``ROOT``) instead of an adapter.
SHARDS = "shards"
#: Options ``-o key=value`` a shard folder takes: a local cache of a remote folder.
SHARD_OPTIONS = ("cache_dir",)


class ShardSplit(Dataset):
    """A split of a shard folder read by index: every sample once, in the stored order, on any rank (validation).

    ``len`` is the split's size from the manifest; a ``StreamingDataset``'s own ``len`` is one rank's
    share of an epoch, which a loop that deals indices over ranks itself must not see.

    Args:
        root: The shard folder, local or an fsspec URL.
        split: The split.
        transform: Applied to each Sample.
        **options: Further :class:`~xrayfm.data.shard_format.ShardDataset` arguments (``cache_dir``).

    Attributes:
        shards: The underlying :class:`~xrayfm.data.shard_format.ShardDataset`.
        total: Samples in the split.
        name, root, split, tasks: As an adapter's dataset has them (reports and metrics name them).
    """

    def __init__(
        self, root: str | Path, split: str, *, transform: Callable[[Sample], Sample] | None = None, **options: Any
    ) -> None:
        self.shards = ShardDataset(root, split, transform=transform, **options)
        self.total = int(self.shards.manifest["counts"][split]["total"])
        self.name, self.root, self.split, self.tasks = self.shards.name, self.shards.root, split, self.shards.tasks

    def task_for(self, key: str) -> Any:
        """The task whose targets live under Sample ``key``, if any (as :meth:`XrayDataset.task_for`)."""
        return self.shards.task_for(key)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> Sample:
        return self.shards[index]


def _shard_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(SHARD_OPTIONS))
    if unknown:
        raise XrayfmError(f"shards take no option {', '.join(unknown)} (options: {', '.join(SHARD_OPTIONS)})")
    return options


def open_shards(
    root: str | Path, split: str, *, seed: int, transform: Callable[[Sample], Sample] | None, options: dict[str, Any]
) -> SeededShards:
    """The ``split`` of shard folder ``root`` as a shuffled, seeded stream for training.

    Args:
        root: The shard folder (``xrayfm shards build`` output), local or an fsspec URL.
        split: The split.
        seed: The run's seed.
        transform: The training view.
        options: ``-o`` options of the command (:data:`SHARD_OPTIONS`).

    Returns:
        The stream.

    Raises:
        XrayfmError: An option shards do not take.
        DatasetError: Not a finished shard folder, or no sample of ``split``.
    """
    return SeededShards(root, split, seed=seed, shuffle=True, transform=transform, **_shard_options(options))


def open_dataset(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    seed: int = 0,
    transform: Callable[[Sample], Sample] | None = None,
    options: dict[str, Any] | None = None,
    stream: bool = True,
) -> XrayDataset | SeededShards | ShardSplit:
    """``split`` of a training command's ``DATASET ROOT``: an adapter's dataset, or for :data:`SHARDS` a shard folder.

    The one place where a command's dataset name decides between an adapter and shards.

    Args:
        dataset: Adapter name, or ``shards``.
        root: Dataset root, or the shard folder (local or an fsspec URL).
        split: The split.
        seed: The run's seed (the stream's shuffle and per-sample seeds).
        transform: Applied to each Sample.
        options: ``-o`` options: the adapter's, or :data:`SHARD_OPTIONS`.
        stream: For shards: a shuffled, seeded stream the engine trains on (:func:`open_shards`); False: a
            :class:`ShardSplit` read by index (validation).

    Returns:
        The dataset.

    Raises:
        XrayfmError: An unknown adapter or option.
        DatasetError: The data cannot be read (``MissingSplitError``: no sample of ``split``).
    """
    options = dict(options or {})
    if dataset != SHARDS:
        return build_dataset(dataset, root, split, transform=transform, **options)
    if stream:
        return open_shards(root, split, seed=seed, transform=transform, options=options)
    return ShardSplit(root, split, transform=transform, **_shard_options(options))


def sample_total(dataset: XrayDataset | SeededShards | ShardSplit) -> int:
    """Samples in a dataset or a whole shard split (not one rank's share of an epoch, as ``len`` of a stream is)."""
    return dataset.total if isinstance(dataset, (SeededShards, ShardSplit)) else len(dataset)
