"""Errors a user can act on.

Every failure the toolkit expects (bad files, unknown names, inconsistent labels) is raised as
a subclass of :class:`XrayfmError`, with a message that names the offending file or value. The
CLI prints these as one line and exits non-zero; anything else is a bug.
"""

from __future__ import annotations

import traceback


class XrayfmError(Exception):
    """Base class of every error xrayfm raises on purpose."""


class ImageReadError(XrayfmError):
    """An image file cannot be read: corrupt, truncated, unsupported or mislabelled."""


class UnsafeInputError(ImageReadError):
    """An input exceeds a safety limit (file size, pixel count, frame count)."""


class DatasetError(XrayfmError):
    """A dataset root does not match the layout or label format its adapter expects."""


class MissingSplitError(DatasetError):
    """A dataset root has no label file for the split asked for (e.g. no official test list)."""


class UnknownNameError(XrayfmError):
    """A registry lookup (dataset, model, policy) used a name that does not exist."""


#: The command that lists every file of a dataset that cannot be read, named by each error that stops at one.
LIST_UNREADABLE = "xrayfm inspect ROOT --check -1"
#: How PyTorch's DataLoader says one of its worker processes died: killed by a signal it saw, or gone without one.
_WORKER_DIED = ("is killed by signal", "exited unexpectedly")
#: How a worker's death shows when it dies while the main process is still receiving a batch from it: the
#: connection that hands over the batch's shared memory is cut or empty, raised from inside the DataLoader.
_CONNECTION_LOST = (EOFError, ConnectionError)
#: PyTorch re-raises an exception from a worker's own code (e.g. a truncated gzip file's EOFError) with this in
#: its message: that worker did not die.
_RAISED_IN_WORKER = "in DataLoader worker process"


def own_message(exc: BaseException) -> str:
    """The message of ``exc`` as raised, also when PyTorch re-raised it from a DataLoader worker process: it then
    reads "Caught ImageReadError in DataLoader worker process 0." followed by the worker's whole traceback, of
    which only the original message (its last line, after the exception's name) is kept."""
    text = str(exc)
    if not text.startswith("Caught ") or _RAISED_IN_WORKER not in text.split("\n", 1)[0]:
        return text
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    bare = f"\n{type(exc).__qualname__}: "  # builtins are printed without their module
    at, size = max((text.rfind(name), len(name)), (text.rfind(bare), len(bare)))
    return text[at + size :].strip() if at >= 0 else text


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first, as a traceback shows
    them (a context hidden by ``raise ... from None`` left out; cycles cut)."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return seen


def _raised_by_the_loader(exc: BaseException) -> bool:
    """Whether ``exc`` passed through PyTorch's DataLoader on its way up."""
    frames = traceback.walk_tb(exc.__traceback__)
    return any(f.f_code.co_filename.replace("\\", "/").endswith("torch/utils/data/dataloader.py") for f, _ in frames)


def _worker_death_report(exc: BaseException) -> str | None:
    """PyTorch's own words for one worker's death, or None when ``exc`` is not such a report."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, RuntimeError) and "DataLoader worker" in text and any(w in text for w in _WORKER_DIED):
        return first
    if isinstance(exc, _CONNECTION_LOST) and _RAISED_IN_WORKER not in text and _raised_by_the_loader(exc):
        return f"DataLoader worker connection lost: {type(exc).__name__}" + (f": {first}" if first else "")
    return None


def data_worker_death(exc: BaseException) -> str | None:
    """What to tell a user whose command stopped because a data-loading worker process died, or None when
    ``exc`` is not that: PyTorch only says the worker was killed or "exited unexpectedly" (or, when the worker died
    while handing over a batch, raises a lost connection from inside the loader), which reads like a bug, while
    the usual causes are a native image decoder crashing on a damaged file and the memory running out."""
    reports = (_worker_death_report(e) for e in _chain(exc))
    said = next((r for r in reports if r is not None), None)
    if said is None:
        return None
    return (
        f"a data-loading worker process died ({said}): most often an image decoder crashing on a damaged file "
        f"(list such files with: {LIST_UNREADABLE}) or the memory running out (try fewer --workers "
        "or a smaller batch); a training run resumes from its last checkpoint when the same command runs again"
    )
