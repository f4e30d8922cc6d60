"""Safe reading of radiographs, from files or bytes: PNG/JPEG/TIFF/BMP (8/16-bit) and DICOM into float32 [0, 1]."""

from xrayfm.io.dicom import SAFE_TAGS, read_dicom
from xrayfm.io.images import read_raster, scale_to_unit
from xrayfm.io.limits import DEFAULT_LIMITS, ImageProbe, ImageSource, ReadLimits
from xrayfm.io.reader import IMAGE_SUFFIXES, XrayImage, probe_image, read_xray, sniff_format
from xrayfm.io.voi import window_to_unit

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "ImageProbe",
    "ImageSource",
    "SAFE_TAGS",
    "ReadLimits",
    "XrayImage",
    "probe_image",
    "read_dicom",
    "read_raster",
    "read_xray",
    "scale_to_unit",
    "sniff_format",
    "window_to_unit",
]
