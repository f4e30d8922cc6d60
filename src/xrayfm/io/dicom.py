"""DICOM radiograph reading through pydicom.

Applies the display pipeline a radiologist's viewer applies, in DICOM order (PS3.3 C.11):
modality LUT / rescale slope-intercept, then VOI (LUT sequence, or window centre/width with its
VOI LUT function), then MONOCHROME1 inversion so bright always means dense. Metadata keeps only
acquisition facts; patient-identifying tags are dropped unless asked for by name.

Compressed pixel data is decoded by pydicom's decoder plugins (GDCM, pylibjpeg with OpenJPEG and
RLE, pyjpegls, Pillow). A caller that will shrink the image may pass ``target_size``: JPEG 2000 is
then decoded at the coarsest resolution level that still covers it, several times faster, and any
image is box-averaged band by band as its values are windowed, so no float copy of the full image
is held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from xrayfm.errors import ImageReadError
from xrayfm.io.images import J2kHeader, decode_j2k, j2k_header, j2k_reduction, reduction_factor
from xrayfm.io.limits import DEFAULT_LIMITS, CheckedSource, ImageProbe, ImageSource, ReadLimits
from xrayfm.io.voi import VoiMode, to_unit

log = logging.getLogger(__name__)

#: Tags copied into metadata by default: acquisition facts, nothing that identifies a patient.
SAFE_TAGS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "Manufacturer",
    "SOPClassUID",
)

#: What to install for each family of compressed transfer syntaxes when no plugin decodes it.
_INSTALL_HINTS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset(uid.JPEGTransferSyntaxes), "pip install python-gdcm (an xrayfm dependency)"),
    (frozenset(uid.JPEGLSTransferSyntaxes), "pip install pyjpegls (an xrayfm dependency)"),
    (frozenset(uid.JPEG2000TransferSyntaxes), "pip install pylibjpeg-openjpeg (an xrayfm dependency)"),
    (frozenset({uid.RLELossless}), "pip install pylibjpeg-rle (an xrayfm dependency)"),
)
#: 12-bit JPEG Extended: pydicom's GDCM and Pillow plugins refuse it; only its GPL one decodes it.
_JPEG12_HINT = "pip install 'xrayfm[gpl-codecs]' (pylibjpeg-libjpeg, GPL-3.0)"
#: Top-level loggers of pydicom and its decoder plugins.
_PLUGIN_LOGGERS = frozenset({"pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "gdcm"})


class _HeldDecoderLogs(logging.Filter):
    """Holds back what pydicom and its plugins log while the current thread decodes pixel data.

    pydicom logs every plugin that fails at ERROR with its traceback, then tries the next one;
    xrayfm reports the outcome itself (one error line, or success), so those records must not
    reach the application's handlers. The filter sits on each plugin logger (a logger's filters
    see only its own records) and holds records of the decoding thread only.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()
        self._loggers_seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(self._local, "held", None)
        if held is None:
            return True
        held.append(record)
        return False

    def _attach(self) -> None:
        loggers = logging.Logger.manager.loggerDict
        if len(loggers) == self._loggers_seen:
            return
        for name in list(loggers):
            if name.partition(".")[0] in _PLUGIN_LOGGERS:
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)
        self._loggers_seen = len(loggers)

    @contextmanager
    def hold(self) -> Iterator[list[logging.LogRecord]]:
        """Collect the plugin records this thread logs inside the block."""
        self._attach()
        outer = getattr(self._local, "held", None)
        self._local.held = held = []
        try:
            yield held
        finally:
            self._local.held = outer


_held_logs = _HeldDecoderLogs()


def _json_value(value: Any) -> Any:
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, pydicom.valuerep.IS):
        return int(value)
    if isinstance(value, float):  # includes DSfloat
        return float(value)
    if isinstance(value, (int, str)):
        return value
    return str(value)


def _value(ds: pydicom.Dataset, keyword: str, default: Any = None) -> Any:
    """An element's value, or ``default`` when it is absent or damaged beyond what pydicom converts (it
    converts an element when first used: an unknown value representation raises there, not on reading)."""
    try:
        return ds.get(keyword, default)
    except Exception:
        return default


def _transfer_syntax(ds: pydicom.Dataset) -> uid.UID | None:
    """The file meta's transfer syntax; None when absent or damaged (unknown, as in a file without one)."""
    value = _value(ds.file_meta, "TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return value if isinstance(value, uid.UID) else uid.UID(value) if isinstance(value, str) else None


def _is_compressed(ds: pydicom.Dataset) -> bool | None:
    """Whether the pixel data is encapsulated (compressed); None when the transfer syntax is unknown."""
    tsyntax = _transfer_syntax(ds)
    try:
        return None if tsyntax is None else bool(tsyntax.is_encapsulated)
    except ValueError:  # not a transfer syntax UID (a damaged header)
        return None


def _native_pixel_bytes(ds: pydicom.Dataset) -> int | None:
    """Bytes of uncompressed pixel data the image attributes declare; None if compressed or undeclared."""
    if _is_compressed(ds) is not False:
        return None
    try:
        values = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
        return (values * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) + 7) // 8
    except Exception:  # missing or garbled attributes: reported when the pixels are read
        return None


def _no_pixel_data(src: CheckedSource, ds: pydicom.Dataset) -> ImageReadError:
    """The error for a file without pixel data: truncated (or stripped) image, or a non-image object."""
    meta = getattr(ds, "file_meta", None)
    sop = _value(meta, "MediaStorageSOPClassUID") if meta is not None else _value(ds, "SOPClassUID")
    sop_name = getattr(sop, "name", "")
    expected, path = _native_pixel_bytes(ds), src.label
    if expected is not None:
        return ImageReadError(
            f"{path}: no pixel data: {expected:,} bytes expected ({ds.Columns}x{ds.Rows}, "
            f"{ds.BitsAllocated} bits allocated), 0 present; the file is truncated or its pixels were removed"
        )
    if "Image Storage" in sop_name:
        return ImageReadError(
            f"{path}: no pixel data in this {sop_name} file of {src.size:,} bytes: it is truncated "
            "(or its pixels were removed)"
        )
    return ImageReadError(f"{path}: DICOM file has no pixel data (e.g. a report or structured document)")


def _syntax_name(tsyntax: uid.UID | None) -> str:
    """``JPEG Lossless, ... (1.2.840.10008.1.2.4.70)``: a transfer syntax by name and UID."""
    if tsyntax is None:
        return "unknown transfer syntax"
    return f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)


def _one_line(text: str) -> str:
    """A plugin's multi-line message (pydicom lists each failed plugin on a line) as one line."""
    return "; ".join(part.strip().rstrip(":") for part in text.splitlines() if part.strip())


def _missing_decoder(path: Path | str, tsyntax: uid.UID, bits_stored: int) -> ImageReadError | None:
    """The error for compressed pixel data that no installed plugin decodes; None when one does."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return ImageReadError(
            f"{path}: pixel data in {_syntax_name(tsyntax)} cannot be decoded: pydicom has no decoder for it"
        )
    if tsyntax == uid.JPEGExtended12Bit and bits_stored > 8 and "pylibjpeg" not in decoder.available_plugins:
        return ImageReadError(
            f"{path}: no decoder plugin is installed for {bits_stored}-bit {_syntax_name(tsyntax)}: {_JPEG12_HINT}"
        )
    if decoder.is_available:
        return None
    hint = next((how for syntaxes, how in _INSTALL_HINTS if tsyntax in syntaxes), None)
    hint = hint or "; ".join(decoder.missing_dependencies)
    return ImageReadError(f"{path}: no decoder plugin is installed for {_syntax_name(tsyntax)}: {hint}")


def _j2k_frame(path: Path | str, ds: pydicom.Dataset) -> tuple[bytes, J2kHeader] | None:
    """The JPEG 2000 codestream of the (single) frame and its main header, or None where it cannot be
    read here (pydicom's plugins then decode it and name any damage).

    Raises:
        ImageReadError: The codestream declares another size than the dataset's Rows and Columns (which
            the read limits checked): decoding it could allocate any amount of memory.
    """
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        header = j2k_header(frame)
    except (ImageReadError, ValueError) as exc:
        log.debug("%s: JPEG 2000 header not read (%s); decoding at full size", path, exc)
        return None
    if (header.width, header.height) != (int(ds.Columns), int(ds.Rows)):
        raise ImageReadError(
            f"{path}: the JPEG 2000 codestream declares {header.width}x{header.height} pixels, the dataset "
            f"{ds.Columns}x{ds.Rows}; refusing to decode a frame that is not the image described"
        )
    return frame, header


def _reduced_j2k(
    path: Path | str, ds: pydicom.Dataset, frame: bytes, header: J2kHeader, target_size: int
) -> tuple[np.ndarray, int] | None:
    """JPEG 2000 stored values of ``frame`` at the coarsest level whose shorter side covers ``target_size``.

    Returns ``(values, levels dropped)``, or None where the full image is needed or the codestream
    is not one this path decodes; pydicom's plugins then decode it (and name any damage).
    """
    if header.signed != bool(_value(ds, "PixelRepresentation", 0)):
        # pydicom reads such samples' bit patterns as the dataset says; a coarser level averages
        # them as the codestream says, which mixes values across the sign wrap: full size only
        return None
    level = j2k_reduction(header, target_size)
    if not level:
        return None
    try:
        return decode_j2k(frame, header, level), level
    except ImageReadError as exc:
        log.debug("%s: %s; decoding at full size", path, exc)
        return None


def _decode_pixels(
    path: Path | str, ds: pydicom.Dataset, tsyntax: uid.UID | None, target_size: int | None
) -> tuple[np.ndarray, int]:
    """Decode the stored pixel values: ``(values, resolution levels dropped)``.

    Raises:
        ImageReadError: One line naming the file, the transfer syntax and why it fails; what the
            plugins logged on the way is held back (see :class:`_HeldDecoderLogs`).
    """
    if _is_compressed(ds) and tsyntax is not None:
        missing = _missing_decoder(path, tsyntax, int(_value(ds, "BitsStored", 0) or 0))
        if missing is not None:
            raise missing
        j2k = _j2k_frame(path, ds) if tsyntax in uid.JPEG2000TransferSyntaxes else None
        if target_size is not None and j2k is not None:
            reduced = _reduced_j2k(path, ds, *j2k, target_size)
            if reduced is not None:
                return reduced
    with _held_logs.hold() as held:
        try:
            raw = ds.pixel_array
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # each plugin raises its own types; Rust ones panic (pyo3's PanicException)
            detail = _one_line(str(exc)) or type(exc).__name__
            raise ImageReadError(f"{path}: cannot decode pixel data ({_syntax_name(tsyntax)}): {detail}") from None
    for record in held:
        log.debug("%s: %s logged while decoding: %s", path, record.name, _one_line(record.getMessage()))
    return raw, 0


def _read_header(src: CheckedSource, stop_before_pixels: bool = False) -> pydicom.Dataset:
    try:
        with src.open() as fh:
            return pydicom.dcmread(fh, force=False, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise ImageReadError(f"{src.label}: not a DICOM file (no 'DICM' marker)") from None
    except Exception as exc:  # pydicom raises many types on broken headers
        raise ImageReadError(f"{src.label}: corrupt DICOM header ({type(exc).__name__}: {exc})") from None


#: The elements that may hold a DICOM image's pixels.
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _check_pixel_element(label: Path | str, ds: pydicom.Dataset) -> None:
    """Convert the pixel data element now (pydicom converts elements when first used), so a damaged one,
    such as an unknown value representation, is refused in one line instead of failing deep inside."""
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            try:
                ds[keyword]
            except Exception as exc:
                raise ImageReadError(f"{label}: corrupt DICOM pixel data element ({exc})") from None


def _image_attributes(label: Path | str, ds: pydicom.Dataset) -> tuple[int, int, int, int]:
    """``(rows, columns, frames, samples per pixel)`` as the dataset declares them."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Rows), int(ds.Columns), frames, int(ds.get("SamplesPerPixel", 1))
    except Exception as exc:
        raise ImageReadError(f"{label}: DICOM image attributes missing or invalid ({exc})") from None


def probe_dicom(src: CheckedSource, limits: ReadLimits = DEFAULT_LIMITS) -> ImageProbe:
    """What a DICOM header declares, read up to the pixel data and no further; dimensions checked.

    Raises:
        ImageReadError: Not DICOM, damaged header, or image attributes missing.
        UnsafeInputError: Declared size above ``limits``.
    """
    ds = _read_header(src, stop_before_pixels=True)
    rows, cols, frames, _ = _image_attributes(src.label, ds)
    limits.check_dims(src.label, cols, rows)
    try:
        bits = ds.get("BitsAllocated")
        bit_depth = int(bits) if bits is not None else None
    except Exception as exc:  # multi-valued, garbage or unconvertible
        raise ImageReadError(f"{src.label}: DICOM BitsAllocated is invalid ({_one_line(str(exc))})") from None
    return ImageProbe("dicom", cols, rows, bit_depth, frames)


def read_dicom(
    source: ImageSource,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    voi: VoiMode = "auto",
    extra_tags: Sequence[str] = (),
    target_size: int | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM radiograph as float32 grey in [0, 1].

    Args:
        source: DICOM file (Part 10, with or without preamble), or its whole content as bytes.
        limits: Safety limits checked before the pixel data is decoded.
        voi: ``"auto"`` applies the file's VOI LUT or first window; ``"none"`` scales the
            modality values min-max.
        extra_tags: Further tag keywords to copy into metadata (e.g. ``"PatientID"`` when the
            caller needs it to split by patient); nothing identifying is copied otherwise.
        target_size: Shorter side, in pixels, the caller will resize the image to. JPEG 2000
            is then decoded at the coarsest resolution level (1/2, 1/4, ...) whose shorter side
            is still at least this, and the stored values are box-averaged by the largest
            further integer factor that keeps it so, band by band as they are windowed: the
            result is the full-size image box-averaged. ``meta["downscale"]`` gives the whole
            factor (1 = full size). None decodes at full resolution.
        name: What error messages call the file (default its path, or ``"upload"`` for bytes).

    Returns:
        ``(pixels, meta)``; pixels (H, W), bright = dense tissue whatever the photometric;
        ``meta["original_size"]`` is the stored (width, height) even when decoded smaller.

    Raises:
        ImageReadError: Missing or not a regular file, not DICOM, no pixel data, truncated,
            multi-frame, colour, undecodable, or compressed in a syntax no installed plugin
            decodes (the message names the package that would).
        UnsafeInputError: File or declared size above ``limits``.
    """
    src = limits.check_source(source, name)  # before opening: a FIFO or device would block or never end
    path = src.label
    ds = _read_header(src)
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise _no_pixel_data(src, ds)
    _check_pixel_element(path, ds)
    rows, cols, frames, samples = _image_attributes(path, ds)
    limits.check_dims(path, cols, rows)
    if frames > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame per file")
    if samples != 1:
        raise ImageReadError(
            f"{path}: colour DICOM ({samples} samples per pixel, "
            f"{ds.get('PhotometricInterpretation', '?')}); radiographs are expected to be greyscale"
        )
    tsyntax = _transfer_syntax(ds)
    expected, present = _native_pixel_bytes(ds), len(ds.get("PixelData", b""))
    if expected is not None and "PixelData" in ds and present < expected:
        raise ImageReadError(
            f"{path}: truncated: {expected:,} bytes of pixel data expected ({cols}x{rows}, "
            f"{ds.BitsAllocated} bits allocated), {present:,} present"
        )
    raw, level = _decode_pixels(path, ds, tsyntax, target_size)
    if raw.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D image, decoded shape {raw.shape}")
    factor = reduction_factor(raw.shape[1], raw.shape[0], target_size)
    try:
        pixels, voi_used = to_unit(raw, ds, voi, factor)
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from None
    except Exception as exc:
        raise ImageReadError(f"{path}: invalid LUT/window attributes ({exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    meta: dict[str, Any] = {
        "format": "DICOM",
        "transfer_syntax": tsyntax.name if tsyntax is not None else None,
        "voi": voi_used,
        "inverted": photometric == "MONOCHROME1",
        "original_size": [cols, rows],
        "downscale": 2**level * factor,
        "bit_depth": int(ds.get("BitsStored", 0) or 0),
        "intensity": "dicom",
    }
    for tag in (*SAFE_TAGS, *extra_tags):
        if tag in ds:
            try:
                meta[tag] = _json_value(ds.data_element(tag).value)
            except Exception as exc:  # a damaged descriptive element costs its entry, not the image
                log.debug("%s: DICOM %s unreadable (%s); left out of the metadata", path, tag, exc)
    return pixels, meta
