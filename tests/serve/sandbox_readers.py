"""Readers for the decode-sandbox tests, importable by name in the sandbox's child processes."""

from __future__ import annotations

import os
from typing import Any

from xrayfm.io import XrayImage, read_xray


def abort_on_crash_marker(data: bytes, **options: Any) -> XrayImage:
    """``read_xray``, except that bytes starting with ``CRASH`` end the process as a native crash would."""
    if data.startswith(b"CRASH"):
        os.abort()
    return read_xray(data, **options)
