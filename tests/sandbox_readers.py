"""Readers for the decode-sandbox tests, importable by name in the sandbox's child processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import RLELossless

from xrayfm.io import XrayImage, read_xray
from xrayfm.io.writers import write_dicom


def _head(data: bytes | str | os.PathLike) -> bytes:
    """The first bytes of what a reader was given: the bytes, or the start of the file at that path."""
    return Path(data).read_bytes()[:8] if isinstance(data, (str, os.PathLike)) else bytes(data[:8])


def abort_on_crash_marker(data: bytes | str | os.PathLike, **options: Any) -> XrayImage:
    """``read_xray``, except that content starting with ``CRASH`` ends the process as a native crash would."""
    if _head(data).startswith(b"CRASH"):
        os.abort()
    return read_xray(data, **options)


def hang_on_marker(data: bytes | str | os.PathLike, **options: Any) -> XrayImage:
    """``read_xray``, except that content starting with ``HANG`` never finishes, as a decoder stuck in a loop."""
    if _head(data).startswith(b"HANG"):
        while True:
            time.sleep(0.01)
    return read_xray(data, **options)


def torch_imported(data: bytes, **options: Any) -> bool:
    """Whether the child process has imported PyTorch (what it imported before reading: its main module)."""
    return "torch" in sys.modules


def rle_dicom(path: Path, pixels: np.ndarray) -> Path:
    """``pixels`` as an RLE Lossless DICOM: compressed pixel data, which a native decoder plugin decodes."""
    write_dicom(path, pixels)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    return path
