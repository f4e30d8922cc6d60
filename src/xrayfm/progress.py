"""Progress where people watch: bars on a terminal, plain lines where output is piped or logged.

On an interactive terminal long loops show a tqdm bar (:func:`progress`). Where nobody watches
a bar (a pipe, a log file, CI), they log a plain line now and then on the ``xrayfm.progress``
logger (:data:`PROGRESS_LOGGER`) at INFO instead; the ``xrayfm`` command prints that logger's
records on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Logger of the progress lines (INFO) of long steps: training, sweeps.
PROGRESS_LOGGER = "xrayfm.progress"


def progress_enabled() -> bool:
    """True on an interactive terminal unless ``CI`` or ``XRAYFM_NO_PROGRESS`` is set.

    Returns:
        Whether to show bars; when False, long steps log plain lines instead.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("XRAYFM_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress(
    items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it", show: bool = True
) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when :func:`progress_enabled` and ``show``.

    Args:
        items: What to iterate over.
        desc: Label of the bar.
        total: Number of items (default ``len(items)`` where it has one).
        unit: Name of one item.
        show: False hides the bar in any case (e.g. on the ranks of a run other than 0).

    Yields:
        The items.
    """
    hide = not (show and progress_enabled())
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=hide, leave=False)


def format_duration(seconds: float) -> str:
    """``41 s`` under a minute, else ``H:MM:SS``.

    Args:
        seconds: A duration.

    Returns:
        The duration as text.
    """
    return f"{seconds:.0f} s" if seconds < 59.5 else format_clock(seconds)


def format_clock(seconds: float) -> str:
    """``H:MM:SS`` of a duration rounded to the second (``0:01:05``), as an ETA reads.

    Args:
        seconds: A duration.

    Returns:
        The duration as text.
    """
    return str(timedelta(seconds=round(seconds)))
