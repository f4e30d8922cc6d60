"""xrayfm: a toolkit for X-ray foundation models.

The core (``xrayfm.io``, ``xrayfm.data``) imports no training or serving extras and downloads
nothing at import time.
"""

from xrayfm.errors import (
    DatasetError,
    ImageReadError,
    UnknownNameError,
    UnsafeInputError,
    XrayfmError,
)

__version__ = "0.1.0"

__all__ = [
    "DatasetError",
    "ImageReadError",
    "UnknownNameError",
    "UnsafeInputError",
    "XrayfmError",
    "__version__",
]
