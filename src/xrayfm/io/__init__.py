"""Safe reading of radiographs: PNG/JPEG/TIFF (8/16-bit) and DICOM into float32 [0, 1]."""

from xrayfm.io.dicom import SAFE_TAGS, read_dicom, window_to_unit
from xrayfm.io.images import read_raster, scale_to_unit
from xrayfm.io.limits import DEFAULT_LIMITS, ReadLimits
from xrayfm.io.reader import IMAGE_SUFFIXES, XrayImage, read_xray, sniff_format

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "SAFE_TAGS",
    "ReadLimits",
    "XrayImage",
    "read_dicom",
    "read_raster",
    "read_xray",
    "scale_to_unit",
    "sniff_format",
    "window_to_unit",
]
