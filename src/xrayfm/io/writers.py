"""Writing radiographs: PNG (8/16-bit) and DICOM (MONOCHROME1/2, any bits stored).

Used by the phantom generator to lay out synthetic datasets exactly as public datasets ship
them, so the readers and adapters are exercised on real file formats.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from xrayfm.errors import XrayfmError


def _check_unit(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim != 2:
        raise XrayfmError(f"expected a 2-D image, got shape {arr.shape}")
    return np.clip(arr, 0.0, 1.0)


def write_png(path: str | Path, pixels: np.ndarray, *, bits: int = 8) -> Path:
    """Write a [0, 1] grey image as an 8- or 16-bit PNG.

    Args:
        path: Output file (parent folders are created).
        pixels: (H, W) float array in [0, 1].
        bits: 8 or 16.
    """
    if bits not in (8, 16):
        raise XrayfmError(f"PNG bit depth must be 8 or 16, got {bits}")
    arr = _check_unit(pixels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 8:
        Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(np.round(arr * 65535).astype(np.uint16)).save(path)
    return path


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a uint8 label map (0 background, class values, 255 ignore) as PNG."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise XrayfmError(f"expected a 2-D mask, got shape {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)
    return path


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    tags: dict[str, Any] | None = None,
) -> Path:
    """Write a [0, 1] grey image as an uncompressed single-frame DICOM radiograph.

    Args:
        path: Output file.
        pixels: (H, W) float array in [0, 1], bright = dense.
        bits_stored: Stored bits (8..16) in a 16-bit word.
        photometric: ``MONOCHROME2`` or ``MONOCHROME1`` (stored inverted, as many CR systems do).
        window: Optional (centre, width) written as the VOI window, in stored-value units.
        rescale: Optional (slope, intercept) written as the modality rescale.
        tags: Extra data elements by keyword (e.g. ``{"PatientID": "P1", "ViewPosition": "PA"}``).
    """
    if not 8 <= bits_stored <= 16:
        raise XrayfmError(f"bits_stored must be within 8..16, got {bits_stored}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise XrayfmError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    arr = _check_unit(pixels)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    stored = np.round(arr * (2**bits_stored - 1)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.ContentDate = _dt.date(2000, 1, 1).strftime("%Y%m%d")
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = float(rescale[0]), float(rescale[1])
    for key, value in (tags or {}).items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
