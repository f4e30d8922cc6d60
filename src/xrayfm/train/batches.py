"""The training loop's batches from a DataLoader, whose worker processes the loop stops itself when it ends.

The loop's loader workers ignore SIGINT and SIGTERM (:func:`~xrayfm.train.checkpoint.quiet_worker`), so
that a stop signal sent to every process of a job lets the main process save its checkpoint first. Python
ends leftover daemonic children at exit with SIGTERM and then waits for them, so a worker still running
then keeps the process waiting for ever. PyTorch asks its workers to stop when the loader's iterator is
freed; but an error raised inside a worker (a damaged image) comes back through a reference cycle, and
when the garbage collector frees that cycle the loader's queues may be closed before the iterator asks its
workers to stop: the command printed its error and then never ended. :class:`LoaderBatches` stops them
when the loop closes it, on success and on error alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from xrayfm.errors import LIST_UNREADABLE, ImageReadError, own_message

#: What to do about a file that stops training, told with its error.
UNREADABLE_HINT = (
    f"list every file of the dataset that cannot be read with: {LIST_UNREADABLE}, and repair or "
    "remove them (-o missing=skip leaves removed files out); the run resumes from its last checkpoint"
)


def stop_workers(iterator: Iterator[Any] | None) -> None:
    """Stop the worker processes of a DataLoader iterator now (no-op for one without workers or None).

    PyTorch's multi-process iterator has no public way to do this; ``_shutdown_workers`` is what its own
    ``__del__`` calls, and what Lightning's loops call to stop workers early.
    """
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class LoaderBatches(Iterator[Any]):
    """The batches of one pass over ``loader``, each moved by ``to_device``; :meth:`close` stops the workers.

    An image or mask that cannot be read raises :class:`~xrayfm.errors.ImageReadError` with its own message (also
    from a worker process) and how to list every such file of the dataset.

    Args:
        loader: The DataLoader (its sampler decides how many batches there are).
        to_device: Applied to each batch (e.g. ``Fabric.to_device``).
    """

    def __init__(self, loader: DataLoader, to_device: Callable[[Any], Any] = lambda batch: batch) -> None:
        self._iterator: Iterator[Any] | None = iter(loader)
        self._to_device = to_device

    def __next__(self) -> Any:
        if self._iterator is None:
            raise StopIteration
        try:
            batch = next(self._iterator)
        except ImageReadError as exc:  # one damaged file: say how to find them all, not one per run
            raise ImageReadError(f"{own_message(exc)}; {UNREADABLE_HINT}") from exc
        return self._to_device(batch)

    def close(self) -> None:
        """Stop the loader's workers; the batches end here."""
        stop_workers(self._iterator)
        self._iterator = None
