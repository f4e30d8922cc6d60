"""One entry point for every supported file: :func:`read_xray`.

The format is decided by the file's content (magic bytes), never by its name alone; a name that
contradicts the content is refused so that a mislabelled export is noticed, not half-read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrayfm.errors import ImageReadError, XrayfmError
from xrayfm.io.dicom import VoiMode, read_dicom
from xrayfm.io.images import Intensity, read_raster
from xrayfm.io.limits import DEFAULT_LIMITS, ReadLimits

#: Extensions accepted for each detected format ("" = no extension, common for DICOM).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "tiff": (".tif", ".tiff"),
    "bmp": (".bmp",),
    "dicom": (".dcm", ".dicom", ".dic", ""),
}
IMAGE_SUFFIXES = frozenset(s for exts in EXTENSIONS.values() for s in exts if s)


@dataclass
class XrayImage:
    """A decoded radiograph.

    Attributes:
        pixels: float32 array (H, W) in [0, 1]; bright = dense (bone white).
        meta: Format facts (format, bit depth, original size, DICOM acquisition tags...).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def sniff_format(head: bytes) -> str | None:
    """Name the image format from the first 132 bytes of a file, or None if unknown.

    The DICOM marker is checked first: the 128-byte preamble may legally hold another
    format's header (dual-personality DICOM/TIFF files, as some CR systems write).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    return None


def read_xray(
    path: str | Path,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    intensity: Intensity = "dtype",
    voi: VoiMode = "auto",
    check_extension: bool = True,
    target_size: int | None = None,
) -> XrayImage:
    """Read any supported radiograph file (PNG, JPEG, TIFF, BMP, DICOM).

    Args:
        path: File to read.
        limits: Size and pixel-count limits, checked before decoding.
        intensity: For PNG/JPEG/TIFF: ``"dtype"`` (divide by 255 or 65535) or ``"minmax"``.
        voi: For DICOM: ``"auto"`` (file's VOI LUT / window) or ``"none"`` (min-max).
        check_extension: Refuse files whose extension names another format than their content.
        target_size: Shorter side, in pixels, the caller will resize the image to; a format that
            can decode at a lower resolution (JPEG 2000 DICOM) then does so, never below it, and
            ``meta["downscale"]`` says by what factor (1 = full size). None: full resolution.

    Returns:
        The decoded :class:`XrayImage`; ``meta["original_size"]`` is the stored (width, height).

    Raises:
        ImageReadError: Missing, empty, corrupt, truncated, unsupported or mislabelled file.
        UnsafeInputError: File or declared pixel count above ``limits``.
    """
    path = Path(path)
    limits.check_file(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    fmt = sniff_format(head)
    if fmt is None:
        raise ImageReadError(f"{path}: unrecognised content (not PNG, JPEG, TIFF, BMP or DICOM with 'DICM' marker)")
    suffix = path.suffix.lower()
    if check_extension and suffix not in EXTENSIONS[fmt] and (suffix in IMAGE_SUFFIXES or fmt != "dicom"):
        raise ImageReadError(
            f"{path}: extension {suffix or '(none)'!r} does not match its content ({fmt.upper()}); "
            "rename the file to match its content (or read it with check_extension=False in Python)"
        )
    if target_size is not None and target_size < 1:
        raise XrayfmError(f"target_size must be a positive number of pixels, not {target_size}")
    if fmt == "dicom":
        pixels, meta = read_dicom(path, limits=limits, voi=voi, target_size=target_size)
    else:
        pixels, meta = read_raster(path, limits=limits, intensity=intensity)
        meta["downscale"] = 1
    meta["path"] = str(path)
    return XrayImage(pixels=pixels, meta=meta)
