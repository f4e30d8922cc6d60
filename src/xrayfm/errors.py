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
