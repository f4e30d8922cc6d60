"""DICOM display pipeline from modality values to [0, 1]: modality LUT, then VOI (LUT sequence or
window centre / width with its VOI LUT function, PS3.3 C.11.2), or min-max scaling without one.

:func:`to_unit` may box-average by a whole factor as it converts, one band of rows at a time, so a
reduced read never holds a float copy of the full image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi

from xrayfm.errors import ImageReadError
from xrayfm.io.images import band_rows, box_mean

VoiMode = Literal["auto", "none"]


def _first(value: Any) -> float:
    """First value of a possibly multi-valued numeric element."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


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


def _voi_lut_to_unit(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    lut = apply_voi(arr, ds).astype(np.float64)
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    return np.clip(lut / float(2**bits - 1), 0, 1).astype(np.float32)


def _voi_stage(ds: pydicom.Dataset, voi: VoiMode) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """The VOI stage as a function of modality values, and its name; None for min-max scaling,
    which needs the whole image's range."""
    if voi == "auto" and "VOILUTSequence" in ds:
        return partial(_voi_lut_to_unit, ds=ds), "voi_lut_sequence"
    if voi == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if math.isfinite(center) and math.isfinite(width) and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR"))
            stage = partial(window_to_unit, center=center, width=width, function=function)
            return stage, f"window {center:g}/{width:g} {function}"
    return None, "minmax"


def _minmax(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def to_unit(raw: np.ndarray, ds: pydicom.Dataset, voi: VoiMode, factor: int) -> tuple[np.ndarray, str]:
    """Modality LUT then VOI of stored values, to float32 [0, 1], box-averaged by ``factor``.

    A reduction converts one band of rows at a time and keeps only its block means, so it gives
    the full-size values box-averaged without a float copy of the full image.

    Args:
        raw: Stored pixel values (rows, columns).
        ds: The dataset whose modality LUT / rescale and VOI elements apply.
        voi: ``auto`` applies the file's VOI LUT or window; ``none`` scales min-max.
        factor: Whole box-averaging factor (1: full size).

    Returns:
        The float32 image in [0, 1] and the name of the VOI stage used.
    """
    stage, name = _voi_stage(ds, voi)
    if factor == 1:
        modality = np.asarray(apply_modality_lut(raw, ds))
        return (stage(modality) if stage else _minmax(modality, float(modality.min()), float(modality.max()))), name
    means, lo, hi = [], math.inf, -math.inf
    for start, stop in band_rows(*raw.shape, factor):
        modality = np.asarray(apply_modality_lut(raw[start:stop], ds))
        if stage is None:  # min-max is linear: average first, scale by the full image's range after
            lo, hi = min(lo, float(modality.min())), max(hi, float(modality.max()))
        means.append(box_mean(stage(modality) if stage else modality, factor))
    reduced = np.concatenate(means)
    return (reduced.astype(np.float32) if stage else _minmax(reduced, lo, hi)), name
