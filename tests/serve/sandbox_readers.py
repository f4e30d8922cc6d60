"""Readers for the decode-sandbox tests, importable by name in the sandbox's child processes."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from xrayfm.io import XrayImage, read_xray


def abort_on_crash_marker(data: bytes, **options: Any) -> XrayImage:
    """``read_xray``, except that bytes starting with ``CRASH`` end the process as a native crash would."""
    if data.startswith(b"CRASH"):
        os.abort()
    return read_xray(data, **options)


def hang_on_marker(data: bytes, **options: Any) -> XrayImage:
    """``read_xray``, except that bytes starting with ``HANG`` never finish, as a decoder stuck in a loop."""
    if data.startswith(b"HANG"):
        while True:
            time.sleep(0.01)
    return read_xray(data, **options)


def torch_imported(data: bytes, **options: Any) -> bool:
    """Whether the child process has imported PyTorch (what it imported before reading: its main module)."""
    return "torch" in sys.modules
