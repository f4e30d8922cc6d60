"""Errors a user can act on.

Every failure the toolkit expects (bad files, unknown names, inconsistent labels) is raised as
a subclass of :class:`XrayfmError`, with a message that names the offending file or value. The
CLI prints these as one line and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


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


#: How PyTorch's DataLoader says one of its worker processes died: killed by a signal it saw, or gone without one.
_WORKER_DIED = ("is killed by signal", "exited unexpectedly")


def data_worker_death(exc: BaseException) -> str | None:
    """What to tell a user whose command stopped because a data-loading worker process died, or None when
    ``exc`` is not that: PyTorch only says the worker was killed or "exited unexpectedly", which reads like a bug,
    while the usual causes are a native image decoder crashing on a damaged file and the memory running out."""
    text = str(exc)
    if not isinstance(exc, RuntimeError) or "DataLoader worker" not in text or not any(w in text for w in _WORKER_DIED):
        return None
    first = text.strip().splitlines()[0]
    return (
        f"a data-loading worker process died ({first}): most often an image decoder crashing on a damaged file "
        "(list such files with: xrayfm inspect ROOT --check -1) or the memory running out (try fewer --workers "
        "or a smaller batch); a training run resumes from its last checkpoint when the same command runs again"
    )
