"""Names the server's threads carry in the operating system, so ``top -H``, ``ps -L`` and
``/proc/PID/task/*/comm`` tell the model's lanes from the decoding threads (Python's own thread
names stay inside Python). Threads a named thread starts inherit its name: the OpenMP workers of a
lane are named after the lane.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

#: Linux ``prctl`` option that names the calling thread.
PR_SET_NAME = 15
#: Longest thread name Linux keeps (bytes, without the terminating zero).
MAX_NAME = 15


@cache
def _libc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("c")
    return ctypes.CDLL(path, use_errno=True) if path else None


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) in the operating system; a no-op off Linux."""
    libc = _libc() if sys.platform.startswith("linux") else None
    if libc is not None:
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:MAX_NAME]), 0, 0, 0)
