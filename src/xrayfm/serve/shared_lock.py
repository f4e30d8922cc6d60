"""A lock held shared by plain forward passes and alone by passes that hook the model.

Forward passes in eval mode change nothing in the model, so the server's lanes run them side by
side; a heatmap pass registers hooks on the model's layers, which a concurrent forward pass would
run through, so it waits for the running passes to end and holds the model alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SharedLock:
    """Many holders of :meth:`shared` at once, or one of :meth:`exclusive`; a waiting exclusive
    holder goes before shared holders that come after it, so heatmaps are not starved under load."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock with other shared holders."""
        with self._changed:
            self._changed.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone."""
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(lambda: not self._exclusive and not self._shared)
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()
