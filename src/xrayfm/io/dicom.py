"""DICOM radiograph reading through pydicom.

Applies the display pipeline a radiologist's viewer applies, in DICOM order (PS3.3 C.11):
modality LUT / rescale slope-intercept, then VOI (LUT sequence, or window centre/width with its
VOI LUT function), then MONOCHROME1 inversion so bright always means dense. Metadata keeps only
acquisition facts; patient-identifying tags are dropped unless asked for by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi

from xrayfm.errors import ImageReadError, UnsafeInputError
from xrayfm.io.limits import DEFAULT_LIMITS, ReadLimits

VoiMode = Literal["auto", "none"]

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


def _first(value: Any) -> float:
    """First value of a possibly multi-valued numeric element."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


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


def window_to_unit(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM VOI window and return values in [0, 1].

    Implements PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and C.11.2.1.3.1
    (SIGMOID) with output range [0, 1] instead of the display's bit range.

    Args:
        arr: Modality values (after rescale).
        center: Window centre.
        width: Window width (must be >= 1, or > 0 for LINEAR_EXACT).
        function: ``VOILUTFunction`` value.

    Returns:
        float32 array in [0, 1].
    """
    x = arr.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:
        if width < 1:
            raise ImageReadError(f"window width {width} is below 1, which DICOM forbids for LINEAR")
        out = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _voi_to_unit(arr: np.ndarray, ds: pydicom.Dataset, voi: VoiMode) -> tuple[np.ndarray, str]:
    if voi == "auto" and "VOILUTSequence" in ds:
        lut = apply_voi(arr, ds).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return np.clip(lut / float(2**bits - 1), 0, 1).astype(np.float32), "voi_lut_sequence"
    if voi == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if math.isfinite(center) and math.isfinite(width) and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR"))
            return window_to_unit(arr, center, width, function), f"window {center:g}/{width:g} {function}"
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32), "minmax"
    return ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32), "minmax"


def _is_compressed(ds: pydicom.Dataset) -> bool | None:
    """Whether the pixel data is encapsulated (compressed); None when the transfer syntax is unknown."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
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


def _no_pixel_data(path: Path, ds: pydicom.Dataset) -> ImageReadError:
    """The error for a file without pixel data: truncated (or stripped) image, or a non-image object."""
    meta = getattr(ds, "file_meta", None)
    sop = meta.get("MediaStorageSOPClassUID") if meta is not None else ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", "")
    expected = _native_pixel_bytes(ds)
    if expected is not None:
        return ImageReadError(
            f"{path}: no pixel data: {expected:,} bytes expected ({ds.Columns}x{ds.Rows}, "
            f"{ds.BitsAllocated} bits allocated), 0 present; the file is truncated or its pixels were removed"
        )
    if "Image Storage" in sop_name:
        return ImageReadError(
            f"{path}: no pixel data in this {sop_name} file of {path.stat().st_size:,} bytes: it is truncated "
            "(or its pixels were removed)"
        )
    return ImageReadError(f"{path}: DICOM file has no pixel data (e.g. a report or structured document)")


def read_dicom(
    path: Path,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    voi: VoiMode = "auto",
    extra_tags: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a single-frame DICOM radiograph as float32 grey in [0, 1].

    Args:
        path: DICOM file (Part 10, with or without preamble).
        limits: Safety limits checked before the pixel data is decoded.
        voi: ``"auto"`` applies the file's VOI LUT or first window; ``"none"`` scales the
            modality values min-max.
        extra_tags: Further tag keywords to copy into metadata (e.g. ``"PatientID"`` when the
            caller needs it to split by patient); nothing identifying is copied otherwise.

    Returns:
        ``(pixels, meta)``; pixels (H, W), bright = dense tissue whatever the photometric.

    Raises:
        ImageReadError: Missing or not a regular file, not DICOM, no pixel data, truncated,
            multi-frame, colour, or undecodable.
        UnsafeInputError: File or declared size above ``limits``.
    """
    path = Path(path)
    limits.check_file(path)  # before opening: a FIFO or device would block or never end
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file (no 'DICM' marker)") from None
    except Exception as exc:  # pydicom raises many types on broken headers
        raise ImageReadError(f"{path}: corrupt DICOM header ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise _no_pixel_data(path, ds)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1))
    except Exception as exc:
        raise ImageReadError(f"{path}: DICOM image attributes missing or invalid ({exc})") from None
    limits.check_dims(path, cols, rows)
    if frames > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame per file")
    if samples != 1:
        raise ImageReadError(
            f"{path}: colour DICOM ({samples} samples per pixel, "
            f"{ds.get('PhotometricInterpretation', '?')}); radiographs are expected to be greyscale"
        )
    tsyntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    expected, present = _native_pixel_bytes(ds), len(ds.get("PixelData", b""))
    if expected is not None and "PixelData" in ds and present < expected:
        raise ImageReadError(
            f"{path}: truncated: {expected:,} bytes of pixel data expected ({cols}x{rows}, "
            f"{ds.BitsAllocated} bits allocated), {present:,} present"
        )
    try:
        raw = ds.pixel_array
    except (UnsafeInputError, ImageReadError):
        raise
    except Exception as exc:
        name = tsyntax.name if tsyntax is not None else "unknown transfer syntax"
        plugin = (
            ". Compressed syntaxes need a decoder plugin (Pillow handles JPEG/JPEG 2000; install pylibjpeg for JPEG-LS)"
            if _is_compressed(ds) is not False
            else ""
        )
        raise ImageReadError(f"{path}: cannot decode pixel data ({name}): {exc}{plugin}") from None
    if raw.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D image, decoded shape {raw.shape}")
    try:
        modality = apply_modality_lut(raw, ds)
        pixels, voi_used = _voi_to_unit(np.asarray(modality), ds, voi)
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
        "bit_depth": int(ds.get("BitsStored", 0) or 0),
        "intensity": "dicom",
    }
    for tag in (*SAFE_TAGS, *extra_tags):
        if tag in ds:
            meta[tag] = _json_value(ds.data_element(tag).value)
    return pixels, meta
