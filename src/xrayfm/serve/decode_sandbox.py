"""DICOM uploads decoded in child processes, so that a decoder crashing on a hostile file costs that upload,
not the server.

pydicom hands compressed pixel data to native plugins, and one of them can take the whole process down
on a damaged stream: fuzzing xrayfm's readers (``tests/fuzz_inputs.py``), GDCM segfaulted on a mutated
JPEG Lossless (SV1) file and aborted on a mutated JPEG 2000 one (an uncaught C++ exception), both
through ``read_xray``. Python cannot catch either. The server therefore reads DICOM uploads with
:func:`xrayfm.io.read_xray` in a pool of ``spawn``-started processes;
when a worker dies the pool is replaced, the read is tried once more in the fresh pool (an upload that
shared the pool with the culprit then succeeds), and a second death answers the upload as unreadable.
PNG, JPEG, TIFF and BMP uploads stay in the server's own threads (Pillow and NumPy, no such crash seen).
The pool starts with the first DICOM upload, so a server that never sees one never pays for it; each
child imports what ``spawn`` re-imports of the main module (with the ``xrayfm`` command, its CLI and so
PyTorch) once, when it starts. The children hold what the decoders held in the server's threads, so
the admission bounds (:mod:`xrayfm.serve.admission`) still bound the memory of uploads.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from xrayfm.errors import ImageReadError
from xrayfm.io import XrayImage, read_xray

#: What a worker runs; a module-level function, as the child imports it by name.
Reader = Callable[..., XrayImage]


class DecoderCrashed(ImageReadError):
    """A decoder process died on this file twice: its pixel data is damaged or hostile."""


class DecodeSandbox:
    """``read_xray`` in child processes, restarted when one dies.

    Args:
        workers: Most reads at once (the server's decode slots).
        reader: What the children run (default :func:`xrayfm.io.read_xray`; tests pass one that crashes).
    """

    def __init__(self, workers: int, reader: Reader = read_xray) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.reader = workers, reader
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

    def read(self, data: bytes, **options: Any) -> XrayImage:
        """``reader(data, **options)`` in a child process; its errors are raised here as they were there.

        Raises:
            DecoderCrashed: The child died on this file, and again in a fresh pool.
            ImageReadError / UnsafeInputError: As the reader raises them.
        """
        for _ in range(2):
            pool = self._current()
            try:
                return pool.submit(self.reader, data, **options).result()
            except BrokenProcessPool:
                self._replace(pool)
        name = options.get("name", "upload")
        raise DecoderCrashed(f"{name}: the DICOM decoder crashed on this file's pixel data (damaged or hostile)")

    def close(self) -> None:
        """Stop the children (reads in flight get a cancellation)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
