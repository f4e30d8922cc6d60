"""DICOM pixel data decoded in child processes, so that a decoder crashing on a hostile file costs that file,
not the process reading it (the server, ``xrayfm inspect`` checking a folder, ``xrayfm explain``).

pydicom hands compressed pixel data to native plugins, and one of them can take the whole process down
on a damaged stream: fuzzing xrayfm's readers (``tests/fuzz_inputs.py``), GDCM segfaulted on a mutated
JPEG Lossless (SV1) file and aborted on a mutated JPEG 2000 one (an uncaught C++ exception), both
through ``read_xray``. Python cannot catch either. The server therefore reads DICOM uploads with
:func:`xrayfm.io.read_xray` in a pool of ``spawn``-started processes;
when a worker dies the pool is replaced, the read is tried once more in the fresh pool (an upload that
shared the pool with the culprit then succeeds), and a second death answers the upload as unreadable.
PNG, JPEG, TIFF and BMP uploads stay in the server's own threads (Pillow and NumPy, no such crash seen);
:meth:`DecodeSandbox.read_file` makes the same split for files on disk (``xrayfm inspect``, ``xrayfm explain``:
checking a folder for bad files must not die on the worst of them).
The pool starts with the first DICOM upload, so a server that never sees one never pays for it; each
child imports what ``spawn`` re-runs of the main module once, when it starts: with the ``xrayfm`` command,
only :mod:`xrayfm.console` (no PyTorch; 76 MB resident per child). The children hold what the decoders
held in the server's threads, so the admission bounds (:mod:`xrayfm.serve.admission`) still bound the memory of uploads.

A decoder that hangs instead (an endless loop on a crafted stream) would hold its decode slot for good, and
as many such uploads as there are slots would stop the server decoding. Each read therefore runs under a
deadline (``timeout``, wall-clock seconds): the child arms a timer whose signal, left at its default action,
ends the process whatever the decoder is doing (no Python handler has to run, so a loop in C is stopped too).
A read that dies at its deadline is not tried again: the upload is answered as too slow to decode.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info

from xrayfm.errors import ImageReadError
from xrayfm.io.limits import ImageSource
from xrayfm.io.reader import XrayImage, read_xray, sniff_format

#: What a worker runs; a module-level function, as the child imports it by name.
Reader = Callable[..., XrayImage]


class DecoderCrashed(ImageReadError):
    """A decoder process died on this file twice: its pixel data is damaged or hostile."""


class DecodeTimedOut(ImageReadError):
    """A decoder process ran past the read's deadline on this file and was stopped."""


def read_before_deadline(reader: Reader, seconds: float, data: bytes, **options: Any) -> XrayImage:
    """``reader(data, **options)`` in a child, which ends (SIGALRM, default action) if it is still reading after
    ``seconds``; the timer is disarmed once the read returns or raises. Where there is no such timer (Windows)
    the read has no deadline."""
    if not hasattr(signal, "setitimer"):
        return reader(data, **options)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return reader(data, **options)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one): how many reads can decode at
    once (the server's decode slots, ``xrayfm inspect``'s workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def native_decoder(path: Path) -> bool:
    """Whether a DICOM file's pixel data goes to one of pydicom's native decoder plugins: its transfer syntax (read
    from the file meta group alone) is a compressed one, or the file meta cannot be read (the child finds out).
    Measured with ``xrayfm inspect --check`` on 60 uncompressed 2048 px files: 2.9 s in this process, 5.2-5.6 s
    through the children."""
    try:
        return bool(read_file_meta_info(path).TransferSyntaxUID.is_compressed)
    except Exception:  # noqa: BLE001 (pydicom raises several kinds on a damaged meta group; the child names it)
        return True


class DecodeSandbox:
    """``read_xray`` in child processes, restarted when one dies.

    Args:
        workers: Most reads at once (the server's decode slots).
        reader: What the children run (default :func:`xrayfm.io.read_xray`; tests pass one that crashes).
        timeout: Wall-clock seconds one read may take in its child; the child is stopped beyond them.
    """

    def __init__(self, workers: int, reader: Reader = read_xray, timeout: float = 30.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.workers, self.reader, self.timeout = workers, reader, timeout
        self.crashes = 0
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first caller to see it broken replaces it; the others reuse that
                self.crashes += 1
                self._pool = None
                broken.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DecodeSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, data: bytes | str | Path, **options: Any) -> XrayImage:
        """``reader(data, **options)`` in a child process (``data`` the file's bytes, or its path: the child then
        reads the file); its errors are raised here as they were there.

        Raises:
            DecoderCrashed: The child died on this file, and again in a fresh pool.
            DecodeTimedOut: The child was still reading at the deadline (``timeout``) and was stopped.
            ImageReadError / UnsafeInputError: As the reader raises them.
        """
        name = options.get("name") or (str(data) if isinstance(data, (str, os.PathLike)) else "upload")
        for _ in range(2):
            pool = self._current()
            started = time.monotonic()
            try:
                return pool.submit(read_before_deadline, self.reader, self.timeout, data, **options).result()
            except BrokenProcessPool:
                self._replace(pool)
                if time.monotonic() - started >= self.timeout:  # this read's own deadline stopped the child
                    raise DecodeTimedOut(f"{name}: decoding this file's pixel data took over {self.timeout:g} s "
                                         "(damaged or hostile); stopped") from None  # fmt: skip
        raise DecoderCrashed(f"{name}: the DICOM decoder crashed on this file's pixel data (damaged or hostile)")

    def read_file(self, source: ImageSource, **options: Any) -> XrayImage:
        """:func:`~xrayfm.io.read_xray` of a file (or its bytes), in a child (:meth:`read`) when it is a DICOM file
        whose pixel data a native decoder would decode (:func:`native_decoder`; for bytes, any DICOM), else in
        this process: uncompressed DICOM is unpacked by NumPy, which no crash was seen in, and the pipe from a
        child would cost more than the decoding. Anything but a regular file (missing, a FIFO, a device) goes
        to ``read_xray`` here, which refuses it before opening it.

        Raises:
            DecoderCrashed / DecodeTimedOut: As :meth:`read`, for a DICOM file.
            ImageReadError / UnsafeInputError: As ``read_xray`` raises them.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            if sniff_format(bytes(source[:132])) == "dicom":
                return self.read(bytes(source), **options)
            return read_xray(source, **options)
        path = Path(source) if isinstance(source, (str, os.PathLike)) else None
        if path is not None and path.is_file():
            try:
                with open(path, "rb") as fh:
                    head = fh.read(132)
            except OSError:  # unreadable: read_xray names the problem
                head = b""
            if sniff_format(head) == "dicom" and native_decoder(path):
                return self.read(path, **options)
        return read_xray(source, **options)

    def close(self) -> None:
        """Stop the children (reads in flight get a cancellation)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
