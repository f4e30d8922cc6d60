"""PNG / JPEG / TIFF reading (8- and 16-bit) into float32 grey images in [0, 1].

Pillow does the decoding; this module adds what X-ray work needs on top: the declared size is
checked before decoding, truncated files fail instead of being padded with grey, 16-bit data
keeps its precision, and colour files (X-rays saved as RGB) are reduced to one channel.
"""

from __future__ import annotations

import logging
import warnings
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
