"""PNG / JPEG / TIFF reading (8- and 16-bit) into float32 grey images in [0, 1].

Pillow does the decoding; this module adds what X-ray work needs on top: the declared size is
checked before decoding, truncated files fail instead of being padded with grey, 16-bit data
keeps its precision, and colour files (X-rays saved as RGB) are reduced to one channel. It also
decodes a JPEG 2000 codestream at a coarser resolution level (OpenJPEG's ``reduce``, through
Pillow), which is how DICOM archives of large CR/DX images are read quickly for a small model.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

from xrayfm.errors import ImageReadError, UnsafeInputError
from xrayfm.io.limits import DEFAULT_LIMITS, ReadLimits

log = logging.getLogger(__name__)

Intensity = Literal["dtype", "minmax"]

# Never let Pillow silently pad a truncated file.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_grey_array(im: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    """Return the pixels of ``im`` as a 2-D integer/float array and its nominal bit depth."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16), 16
    if mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageReadError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported")
        return arr.astype(np.uint16), 16
    if mode == "F":
        return np.asarray(im, dtype=np.float32), 0
    if mode in ("L", "P", "1", "LA", "PA"):
        return np.asarray(im.convert("L"), dtype=np.uint8), 8
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            log.debug("%s: colour image reduced to luminance", path)
        return np.asarray(im.convert("L"), dtype=np.uint8), 8
    raise ImageReadError(f"{path}: unsupported pixel mode {mode!r}")


def scale_to_unit(arr: np.ndarray, bit_depth: int, intensity: Intensity) -> np.ndarray:
    """Map raw pixels to float32 [0, 1].

    Args:
        arr: Raw 2-D pixels.
        bit_depth: Nominal depth (8 or 16); 0 for float data, which is always min-max scaled.
        intensity: ``"dtype"`` divides by the type's maximum (keeps absolute exposure);
            ``"minmax"`` stretches each image to its own range.

    Returns:
        A float32 array with values in [0, 1].
    """
    out = arr.astype(np.float32)
    if intensity == "dtype" and bit_depth > 0:
        return out / float(2**bit_depth - 1)
    lo, hi = float(np.min(out)), float(np.max(out))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageReadError("image contains NaN or infinite pixel values")
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


def read_raster(
    path: Path,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    intensity: Intensity = "dtype",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG/JPEG/TIFF/BMP file as a float32 grey image in [0, 1].

    Args:
        path: Image file.
        limits: Safety limits checked before decoding.
        intensity: How raw values map to [0, 1]; see :func:`scale_to_unit`.

    Returns:
        ``(pixels, meta)`` with ``pixels`` of shape (H, W) and ``meta`` holding format, mode,
        bit depth and original size.

    Raises:
        ImageReadError: The file is missing, not a regular file, corrupt, truncated or of an
            unsupported kind.
        UnsafeInputError: The file or its declared size exceeds ``limits``.
    """
    limits.check_file(path)  # before opening: a FIFO or device would block or never end
    try:
        with warnings.catch_warnings():
            # Size is checked by ReadLimits below; Pillow's own warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                limits.check_dims(path, *im.size)
                if getattr(im, "n_frames", 1) > 1:
                    raise ImageReadError(f"{path}: has {im.n_frames} frames; xrayfm reads single-frame images only")
                fmt = im.format
                im.load()
                im = ImageOps.exif_transpose(im) if fmt == "JPEG" else im
                arr, depth = _to_grey_array(im, path)
                mode = im.mode
    except (ImageReadError, UnsafeInputError):
        raise
    except Image.DecompressionBombError as exc:
        raise UnsafeInputError(f"{path}: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{path}: not a readable image (unrecognised or corrupt content)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{path}: corrupt or truncated image ({exc})") from None
    meta = {
        "format": fmt,
        "mode": mode,
        "bit_depth": depth,
        "original_size": [int(arr.shape[1]), int(arr.shape[0])],
        "intensity": intensity if depth else "minmax",
    }
    return scale_to_unit(arr, depth, intensity), meta


@dataclass(frozen=True)
class J2kHeader:
    """What the main header of a JPEG 2000 codestream says about its first component.

    Attributes:
        width: Image width (``Xsiz - XOsiz``).
        height: Image height (``Ysiz - YOsiz``).
        origin: Image offset on the reference grid (``XOsiz``, ``YOsiz``).
        precision: Bits per sample (1..38).
        signed: Whether samples are two's-complement signed.
        components: Number of components (1 for greyscale).
        levels: Wavelet decomposition levels of component 0 (COD, or its COC override): the
            image can be decoded at 1/2, 1/4 ... 1/2**levels of its size.
    """

    width: int
    height: int
    origin: tuple[int, int]
    precision: int
    signed: bool
    components: int
    levels: int

    def reduced_size(self, level: int) -> tuple[int, int]:
        """(width, height) that decoding at ``level`` (1/2**level) yields (ISO 15444-1 B.5)."""
        x0, y0 = self.origin

        def ceil(n: int) -> int:
            return -(-n // 2**level)

        return ceil(x0 + self.width) - ceil(x0), ceil(y0 + self.height) - ceil(y0)


def j2k_header(codestream: bytes) -> J2kHeader:
    """Parse the SIZ, COD and COC markers of a raw JPEG 2000 codestream (as DICOM encapsulates it).

    Raises:
        ImageReadError: The data is not a codestream or its main header is damaged.
    """
    if not codestream.startswith(b"\xff\x4f\xff\x51"):
        raise ImageReadError("not a JPEG 2000 codestream (no SOC/SIZ markers)")
    pos, siz, levels, coc_levels = 2, None, None, None
    try:
        while pos + 4 <= len(codestream):
            marker, length = struct.unpack(">HH", codestream[pos : pos + 4])
            body = codestream[pos + 4 : pos + 2 + length]
            if marker == 0xFF90 or length < 2:  # SOT: the main header is over
                break
            if marker == 0xFF51:
                xsiz, ysiz, x0, y0 = struct.unpack(">4I", body[2:18])
                csiz, ssiz = struct.unpack(">HB", body[34:37])
                siz = (xsiz - x0, ysiz - y0, (x0, y0), (ssiz & 0x7F) + 1, bool(ssiz & 0x80), csiz)
            elif marker == 0xFF52:
                levels = body[5]
            elif marker == 0xFF53 and siz is not None:
                wide = siz[5] >= 257  # Ccoc takes two bytes past 256 components
                if int.from_bytes(body[: 2 if wide else 1], "big") == 0:
                    coc_levels = body[3 if wide else 2]
            pos += 2 + length
    except (struct.error, IndexError):
        raise ImageReadError("damaged JPEG 2000 main header") from None
    if siz is None or levels is None:
        raise ImageReadError("JPEG 2000 main header without SIZ or COD marker")
    return J2kHeader(*siz, levels=coc_levels if coc_levels is not None else levels)


def j2k_reduction(header: J2kHeader, target_size: int) -> int:
    """The coarsest resolution level whose shorter side is still at least ``target_size``.

    A level Pillow cannot decode is skipped for the next finer one: Pillow (13.0) sizes a
    reduced image by rounding half up where OpenJPEG rounds up (ISO 15444-1 B.5), and refuses
    the stream where the two differ (e.g. 1841 px at 1/4: 460 against 461).
    """
    level = 0
    while level < header.levels and min(header.reduced_size(level + 1)) >= target_size:
        level += 1
    while level and header.reduced_size(level) != _pillow_reduced_size(header, level):
        level -= 1
    return level


def _pillow_reduced_size(header: J2kHeader, level: int) -> tuple[int, int]:
    half = 2**level >> 1
    return (header.width + half) // 2**level, (header.height + half) // 2**level


def decode_j2k(codestream: bytes, header: J2kHeader, level: int = 0) -> np.ndarray:
    """Decode a greyscale JPEG 2000 codestream at 1/2**level of its size to its stored values.

    Pillow scales N-bit samples up to 8 or 16 bits and offsets signed ones to unsigned
    (``j2ku_gray_l`` / ``j2ku_gray_i`` in its ``Jpeg2KDecode.c``); both are undone here, so the
    result holds the codestream's own sample values.

    Args:
        codestream: Raw codestream (SOC first, no JP2 boxes).
        header: Its :func:`j2k_header`.
        level: Resolution levels to discard (0 = full size), at most ``header.levels``.

    Returns:
        int32 array of shape ``header.reduced_size(level)`` reversed (rows, columns).

    Raises:
        ImageReadError: Colour or over-16-bit data, or a stream OpenJPEG cannot decode.
    """
    if header.components != 1 or header.precision > 16:
        raise ImageReadError(
            f"JPEG 2000 with {header.components} components of {header.precision} bits is not a greyscale radiograph "
            "Pillow can decode"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # callers check ReadLimits
            with Image.open(io.BytesIO(codestream), formats=["JPEG2000"]) as im:
                im.reduce = level
                im.load()
                stored = np.asarray(im)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"JPEG 2000 codestream cannot be decoded ({exc})") from None
    shift = 8 * stored.dtype.itemsize - header.precision
    offset = 2 ** (header.precision - 1) if header.signed else 0
    return (stored.astype(np.int32) >> shift) - offset
