"""PNG / JPEG / TIFF / BMP reading (8- and 16-bit) into float32 grey images in [0, 1].

Pillow does the decoding; this module adds what X-ray work needs on top: the declared size is
checked before decoding, truncated files fail instead of being padded with grey, 16-bit data
keeps its precision, and colour files (X-rays saved as RGB) are reduced to one channel. A caller
that will shrink the image may ask for a reduced decode: JPEG is then decoded at 1/2, 1/4 or 1/8
by its DCT scaling and every format is box-averaged before the float copy is made, so no float
array of the full image is ever held. It also decodes a JPEG 2000 codestream at a coarser
resolution level (OpenJPEG's ``reduce``, through Pillow), which is how DICOM archives of large
CR/DX images are read quickly for a small model.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image, ImageChops, ImageFile, ImageOps

from xrayfm.errors import ImageReadError, UnsafeInputError
from xrayfm.io.limits import DEFAULT_LIMITS, CheckedSource, ImageProbe, ImageSource, ReadLimits

log = logging.getLogger(__name__)

Intensity = Literal["dtype", "minmax"]

# Never let Pillow silently pad a truncated file.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_COLOUR = ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
#: Bits per sample of a Pillow mode once decoded.
_MODE_BITS = {"1": 1, "I": 32, "F": 32, **dict.fromkeys(_SIXTEEN_BIT, 16)}
#: numpy type of the grey array for each nominal bit depth (0: float data).
_DTYPES = {8: np.uint8, 16: np.uint16, 0: np.float32}
#: Sizes libjpeg's DCT scaling decodes to: 1/8, 1/4, 1/2, 1/1.
_DCT_SCALES = (8, 4, 2, 1)
#: EXIF orientations that turn the image by 90 degrees (width and height swap).
_TURNED = (5, 6, 7, 8)
#: About how many pixels a band of a banded reduction holds (2 MiB as float64).
_BAND_PIXELS = 1 << 18


def reduction_factor(width: int, height: int, target_size: int | None) -> int:
    """The largest integer factor that keeps the shorter side at least ``target_size`` (1: full size)."""
    return 1 if target_size is None else max(1, min(width, height) // target_size)


def box_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of a 2-D array, as float64.

    Blocks cut by the right or bottom edge are averaged over the pixels they hold, as Pillow's
    ``Image.reduce`` does, so the result has ``ceil(side / factor)`` pixels per side.
    """
    h, w = arr.shape
    ys, xs = np.arange(0, h, factor), np.arange(0, w, factor)
    sums = np.add.reduceat(np.add.reduceat(arr, ys, axis=0, dtype=np.float64), xs, axis=1)
    return sums / np.outer(np.diff(ys, append=h), np.diff(xs, append=w))


def band_rows(height: int, width: int, factor: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``(start, stop)`` covering an image, each a whole number of ``factor``-row blocks
    of about ``_BAND_PIXELS``, so a reduction converts one band to float at a time."""
    step = factor * max(1, _BAND_PIXELS // (factor * factor * width))
    for start in range(0, height, step):
        yield start, min(start + step, height)


def _grey_image(im: Image.Image, label: object) -> tuple[Image.Image, int]:
    """``im`` as one grey band: L (8 bits), I;16 or I holding 16-bit values (16), or F (0: float)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        return im, 16
    if mode == "I":
        lo, hi = im.getextrema()
        if lo < 0 or hi > 65535:
            raise ImageReadError(f"{label}: 32-bit integer pixels outside 0..65535 are not supported")
        return im, 16
    if mode == "F":
        return im, 0
    if mode in ("L", "P", "1", "LA", "PA"):
        return (im if mode == "L" else im.convert("L")), 8
    if mode in _COLOUR:
        if log.isEnabledFor(logging.DEBUG):
            red, green, blue = im.convert("RGB").split()
            if ImageChops.difference(red, green).getbbox() or ImageChops.difference(green, blue).getbbox():
                log.debug("%s: colour image reduced to luminance", label)
        return im.convert("L"), 8
    raise ImageReadError(f"{label}: unsupported pixel mode {mode!r}")


def scale_to_unit(
    arr: np.ndarray, bit_depth: int, intensity: Intensity, extrema: tuple[float, float] | None = None
) -> np.ndarray:
    """Map raw pixels to float32 [0, 1].

    Args:
        arr: Raw 2-D pixels.
        bit_depth: Nominal depth (8 or 16); 0 for float data, which is always min-max scaled.
        intensity: ``"dtype"`` divides by the type's maximum (keeps absolute exposure);
            ``"minmax"`` stretches each image to its own range.
        extrema: The (min, max) min-max scaling uses; default those of ``arr``. A reduced image
            passes its full-size range, which box averaging narrows.

    Returns:
        A float32 array with values in [0, 1].
    """
    out = arr.astype(np.float32)
    if intensity == "dtype" and bit_depth > 0:
        return out / float(2**bit_depth - 1)
    lo, hi = (float(np.min(out)), float(np.max(out))) if extrema is None else map(float, extrema)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ImageReadError("image contains NaN or infinite pixel values")
    if hi <= lo:
        return np.zeros_like(out)
    return (out - lo) / (hi - lo)


@contextmanager
def _opened(src: CheckedSource) -> Iterator[ImageFile.ImageFile]:
    """``src`` opened by Pillow, which reads its header only; Pillow's errors become one-line ones."""
    try:
        with warnings.catch_warnings():
            # Size is checked by ReadLimits; Pillow's own warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with src.open() as fh, Image.open(fh) as im:
                yield im
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise UnsafeInputError(f"{src.label}: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{src.label}: not a readable image (unrecognised or corrupt content)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:  # TypeError: damaged TIFF tags
        raise ImageReadError(f"{src.label}: corrupt or truncated image ({exc})") from None


def probe_raster(src: CheckedSource, fmt: str, limits: ReadLimits = DEFAULT_LIMITS) -> ImageProbe:
    """What a PNG/JPEG/TIFF/BMP header declares, without decoding a pixel; dimensions checked.

    ``fmt`` is the format :func:`xrayfm.io.sniff_format` names (Pillow may call a JPEG ``MPO``).

    Raises:
        ImageReadError: Unreadable header.
        UnsafeInputError: Declared size above ``limits``.
    """
    with _opened(src) as im:
        limits.check_dims(src.label, *im.size)
        bits = getattr(im, "bits", None) if fmt == "jpeg" else _MODE_BITS.get(im.mode, 8)
        return ImageProbe(fmt, im.width, im.height, bits, getattr(im, "n_frames", 1))


def _reduced(
    im: ImageFile.ImageFile, label: object, intensity: Intensity, target_size: int
) -> tuple[np.ndarray, int, str, int]:
    """Decode ``im`` (opened, not loaded) reduced by an integer factor whose shorter side stays at
    least ``target_size``: JPEG by DCT scaling first (not for min-max intensity, which needs the full
    image's range), then a box mean of the grey integer image.

    Returns:
        ``(pixels, bit depth, mode, factor)``.
    """
    scale = 1
    if im.format == "JPEG" and intensity == "dtype":
        dct = next(s for s in _DCT_SCALES if s <= reduction_factor(*im.size, target_size))
        if dct > 1 and im.draft("L", (im.width // dct, im.height // dct)) is not None:
            scale = dct
    im.load()
    im = ImageOps.exif_transpose(im) if im.format == "JPEG" else im
    grey, depth = _grey_image(im, label)
    factor = reduction_factor(*grey.size, target_size)
    extrema = grey.getextrema() if intensity == "minmax" or depth == 0 else None
    if grey.mode in _SIXTEEN_BIT and factor > 1:
        width, height = grey.size
        bands = (np.asarray(grey.crop((0, y0, width, y1)), np.uint16) for y0, y1 in band_rows(height, width, factor))
        arr = np.concatenate([box_mean(band, factor) for band in bands])
    else:
        arr = np.asarray(grey.reduce(factor) if factor > 1 else grey, _DTYPES[depth])
    if depth == 0 and not np.isfinite(arr).all():  # a NaN or inf pixel spreads to its block's mean
        raise ImageReadError(f"{label}: image contains NaN or infinite pixel values")
    return scale_to_unit(arr, depth, intensity, extrema), depth, im.mode, scale * factor


def read_raster(
    source: ImageSource,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    intensity: Intensity = "dtype",
    target_size: int | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG/JPEG/TIFF/BMP file as a float32 grey image in [0, 1].

    Args:
        source: Image file, or its whole content as bytes.
        limits: Safety limits checked before decoding.
        intensity: How raw values map to [0, 1]; see :func:`scale_to_unit`.
        target_size: Shorter side the caller will resize to: the image is then decoded reduced by
            the largest integer factor that keeps its shorter side at least this, its intensities
            those of the full image box-averaged. JPEG is first decoded at 1/2, 1/4 or 1/8 by DCT
            scaling (the DCT's low-pass, not exactly a box mean: within about a grey level inside,
            more in a last row or column cut by the 8 px blocks), except for ``"minmax"``.
        name: What error messages call the file (default its path, or ``"upload"`` for bytes).

    Returns:
        ``(pixels, meta)`` with ``pixels`` of shape (H, W) and ``meta`` holding format, mode,
        bit depth, original size (after EXIF orientation) and ``downscale`` (1 = full size).

    Raises:
        ImageReadError: The file is missing, not a regular file, corrupt, truncated or of an
            unsupported kind.
        UnsafeInputError: The file or its declared size exceeds ``limits``.
    """
    src = limits.check_source(source, name)  # before opening: a FIFO or device would block or never end
    label = src.label
    with _opened(src) as im:
        limits.check_dims(label, *im.size)
        if getattr(im, "n_frames", 1) > 1:
            raise ImageReadError(f"{label}: has {im.n_frames} frames; xrayfm reads single-frame images only")
        fmt = im.format
        if target_size is not None:
            turned = fmt == "JPEG" and im.getexif().get(ExifTags.Base.Orientation) in _TURNED
            size = im.size[::-1] if turned else im.size
            pixels, depth, mode, factor = _reduced(im, label, intensity, target_size)
        else:
            im.load()
            im = ImageOps.exif_transpose(im) if fmt == "JPEG" else im
            grey, depth = _grey_image(im, label)
            arr, mode, factor = np.asarray(grey, _DTYPES[depth]), im.mode, 1
            size = arr.shape[::-1]
    if target_size is None:
        pixels = scale_to_unit(arr, depth, intensity)
    meta = {
        "format": fmt,
        "mode": mode,
        "bit_depth": depth,
        "original_size": [int(size[0]), int(size[1])],
        "downscale": factor,
        "intensity": intensity if depth else "minmax",
    }
    return pixels, meta


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
    except Image.DecompressionBombError as exc:  # past Pillow's own bound, which ReadLimits may exceed
        raise UnsafeInputError(f"JPEG 2000 codestream: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"JPEG 2000 codestream cannot be decoded ({exc})") from None
    shift = 8 * stored.dtype.itemsize - header.precision
    offset = 2 ** (header.precision - 1) if header.signed else 0
    return (stored.astype(np.int32) >> shift) - offset
