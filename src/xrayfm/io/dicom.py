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
        ImageReadError: Not DICOM, no pixel data, multi-frame, colour, or undecodable.
        UnsafeInputError: Declared size above ``limits``.
    """
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file (no 'DICM' marker)") from None
    except Exception as exc:  # pydicom raises many types on broken headers
        raise ImageReadError(f"{path}: corrupt DICOM header ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data (e.g. a report or structured document)")
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
    try:
        raw = ds.pixel_array
    except (UnsafeInputError, ImageReadError):
        raise
    except Exception as exc:
        name = tsyntax.name if tsyntax is not None else "unknown transfer syntax"
        raise ImageReadError(
            f"{path}: cannot decode pixel data ({name}): {exc}. Compressed syntaxes need a decoder "
            "plugin (Pillow handles JPEG/JPEG 2000; install pylibjpeg for JPEG-LS)"
        ) from None
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
