"""Safety limits applied before any pixel is decoded.

X-ray files arrive from PACS exports, web uploads and scraped collections; a hostile or broken
file must fail fast with a clear error instead of exhausting memory (decompression bombs) or
hanging. The defaults admit every real radiograph (a 43x43 cm detector at 0.1 mm is ~18 MP).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

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
        if st.st_size == 0:
            raise ImageReadError(f"{path}: file is empty (0 bytes)")
        if st.st_size > self.max_file_bytes:
            raise UnsafeInputError(
                f"{path}: file is {st.st_size / 2**20:.1f} MiB, above the limit of "
                f"{self.max_file_bytes / 2**20:.0f} MiB (raise ReadLimits.max_file_bytes to allow it)"
            )
        return st.st_size

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


DEFAULT_LIMITS = ReadLimits()
