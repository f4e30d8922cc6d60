"""Progress bars that stay quiet where nobody watches (CI, pipes, logs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    """True on an interactive terminal unless ``CI`` or ``XRAYFM_NO_PROGRESS`` is set."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("XRAYFM_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when :func:`progress_enabled`."""
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not progress_enabled(), leave=False)
