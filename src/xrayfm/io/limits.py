"""Safety limits applied before any pixel is decoded.

X-ray files arrive from PACS exports, web uploads and scraped collections; a hostile or broken
file must fail fast with a clear error instead of exhausting memory (decompression bombs) or
hanging. The defaults admit every real radiograph (a 43x43 cm detector at 0.1 mm is ~18 MP).
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from xrayfm.errors import ImageReadError, UnsafeInputError

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, from its ``st_mode``: ``a FIFO``."""
    return next((word for test, word in _FILE_KINDS if test(mode)), "an unknown kind of file")


@dataclass(frozen=True)
class ReadLimits:
    """Upper bounds checked before decoding.

    Attributes:
        max_file_bytes: Largest file accepted, in bytes (default 512 MiB).
        max_pixels: Largest ``rows * columns`` accepted (default 100 megapixels).
        max_side: Largest single dimension accepted (default 32768).
    """

    max_file_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_side: int = 32_768

    def check_file(self, path: Path) -> int:
        """Check that ``path`` is a non-empty regular file within the size limit.

        Returns:
            The file size in bytes.

        Raises:
            ImageReadError: The file is missing, not a regular file, or empty.
            UnsafeInputError: The file is larger than ``max_file_bytes``.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageReadError(f"{path}: file not found") from None
        except OSError as exc:
            raise ImageReadError(f"{path}: cannot be opened ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageReadError(f"{path}: not a regular file ({_file_kind(st.st_mode)})")
        self._check_size(path, st.st_size)
        return st.st_size

    def _check_size(self, label: Path | str, size: int) -> None:
        if size == 0:
            raise ImageReadError(f"{label}: file is empty (0 bytes)")
        if size > self.max_file_bytes:
            raise UnsafeInputError(
                f"{label}: file is {size / 2**20:.1f} MiB, above the limit of "
                f"{self.max_file_bytes / 2**20:.0f} MiB (raise ReadLimits.max_file_bytes to allow it)"
            )

    def check_source(self, source: ImageSource, name: str | None = None) -> CheckedSource:
        """Admit a file on disk (:meth:`check_file`) or in memory (its length against ``max_file_bytes``).

        Args:
            source: A path, the whole file as bytes, or an already checked source (returned as is).
            name: What error messages call the file; default the path, or ``"upload"`` for bytes.

        Raises:
            ImageReadError: The file is missing, not a regular file, or empty.
            UnsafeInputError: The file is larger than ``max_file_bytes``.
        """
        if isinstance(source, CheckedSource):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            label = name if name is not None else "upload"
            size = memoryview(source).nbytes
            self._check_size(label, size)  # before any copy of a memoryview or bytearray
            return CheckedSource(label, size, data=source if isinstance(source, bytes) else bytes(source))
        path = Path(source)
        return CheckedSource(name if name is not None else path, self.check_file(path), path=path)

    def check_dims(self, path: Path | str, width: int, height: int) -> None:
        """Check declared image dimensions before decoding.

        Raises:
            ImageReadError: A dimension is zero or negative.
            UnsafeInputError: The image is larger than the limits.
        """
        if width <= 0 or height <= 0:
            raise ImageReadError(f"{path}: declares an empty image ({width}x{height})")
        if max(width, height) > self.max_side or width * height > self.max_pixels:
            raise UnsafeInputError(
                f"{path}: declares {width}x{height} pixels, above the limit of "
                f"{self.max_pixels:,} pixels / {self.max_side} per side "
                "(possible decompression bomb; raise ReadLimits to allow it)"
            )


@dataclass(frozen=True)
class CheckedSource:
    """A file admitted by :meth:`ReadLimits.check_source`: on disk or whole in memory.

    Attributes:
        label: What error messages call it (the path, the caller's name, or ``"upload"``).
        size: Its length in bytes.
        path: The file on disk; None for bytes.
        data: The bytes in memory; None for a file on disk.
    """

    label: Path | str
    size: int
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        """A binary stream of the content, from its start (``io.BytesIO`` shares the bytes, no copy)."""
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")  # type: ignore[arg-type]

    def head(self, n: int = 132) -> bytes:
        """The first ``n`` bytes (enough for :func:`xrayfm.io.sniff_format`)."""
        if self.data is not None:
            return self.data[:n]
        with self.open() as fh:
            return fh.read(n)


@dataclass(frozen=True)
class ImageProbe:
    """What a file's header declares, read without decoding a pixel.

    Attributes:
        format: ``"png"``, ``"jpeg"``, ``"tiff"``, ``"bmp"`` or ``"dicom"``.
        width: Declared width in pixels (as stored: before any EXIF rotation).
        height: Declared height in pixels.
        bit_depth: Bits per sample: JPEG's sample precision, DICOM's BitsAllocated, for other
            formats those of the pixel mode Pillow decodes to; None when the header does not say.
        frames: Frames (DICOM NumberOfFrames, TIFF pages, APNG frames); 1 for a single image.
    """

    format: str
    width: int
    height: int
    bit_depth: int | None
    frames: int

    @property
    def pixels(self) -> int:
        """Declared pixels of one frame (``width * height``)."""
        return self.width * self.height


#: A file to read: a path, or the whole file's bytes in memory (an upload).
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | CheckedSource

DEFAULT_LIMITS = ReadLimits()
