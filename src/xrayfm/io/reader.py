"""One entry point for every supported file: :func:`read_xray`, and its header-only twin :func:`probe_image`.

The format is decided by the file's content (magic bytes), never by its name alone; a name that
contradicts the content is refused so that a mislabelled export is noticed, not half-read. A file
may also come as bytes (an upload), read from memory without a temporary file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xrayfm.errors import ImageReadError, XrayfmError
from xrayfm.io.dicom import VoiMode, probe_dicom, read_dicom
from xrayfm.io.images import Intensity, probe_raster, read_raster
from xrayfm.io.limits import DEFAULT_LIMITS, CheckedSource, ImageProbe, ImageSource, ReadLimits

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


def _checked(source: ImageSource, limits: ReadLimits, name: str | None) -> tuple[CheckedSource, str]:
    """The admitted source and its format by content."""
    src = limits.check_source(source, name)
    fmt = sniff_format(src.head())
    if fmt is None:
        raise ImageReadError(
            f"{src.label}: unrecognised content (not PNG, JPEG, TIFF, BMP or DICOM with 'DICM' marker)"
        )
    return src, fmt


def probe_image(source: ImageSource, *, limits: ReadLimits = DEFAULT_LIMITS, name: str | None = None) -> ImageProbe:
    """What a file's header declares (format, size, bit depth, frames), without decoding a pixel.

    Reads the PNG/JPEG/TIFF/BMP header through Pillow's lazy open and a DICOM file up to its
    pixel data, so a server can refuse or queue an upload by its pixel count before decoding it.

    Args:
        source: A path, or the whole file as bytes.
        limits: File size and declared pixel limits, both checked here.
        name: What error messages call the file (default its path, or ``"upload"`` for bytes).

    Raises:
        ImageReadError: Missing, empty, unrecognised or damaged file.
        UnsafeInputError: File size or declared dimensions above ``limits``.
    """
    src, fmt = _checked(source, limits, name)
    return probe_dicom(src, limits) if fmt == "dicom" else probe_raster(src, fmt, limits)


def read_xray(
    source: ImageSource,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    intensity: Intensity = "dtype",
    voi: VoiMode = "auto",
    check_extension: bool = True,
    target_size: int | None = None,
    name: str | None = None,
) -> XrayImage:
    """Read any supported radiograph (PNG, JPEG, TIFF, BMP, DICOM) from a file or from bytes.

    Args:
        source: File to read, or its whole content as ``bytes`` / ``bytearray`` / ``memoryview``
            (an upload: read from memory, no extension check, ``limits.max_file_bytes`` applies
            to its length).
        limits: Size and pixel-count limits, checked before decoding.
        intensity: For PNG/JPEG/TIFF: ``"dtype"`` (divide by 255 or 65535) or ``"minmax"``.
        voi: For DICOM: ``"auto"`` (file's VOI LUT / window) or ``"none"`` (min-max).
        check_extension: Refuse files whose extension names another format than their content.
        target_size: Shorter side, in pixels, the caller will resize the image to. The image is
            then decoded reduced by an integer factor that keeps its shorter side at least this
            (JPEG by DCT scaling, JPEG 2000 by resolution level, then a box mean before any float
            copy); its values are those of the full-size image box-averaged, and
            ``meta["downscale"]`` says by what factor (1 = full size). None: full resolution.
        name: What error messages call the file; default its path, or ``"upload"`` for bytes.

    Returns:
        The decoded :class:`XrayImage`; ``meta["original_size"]`` is the stored (width, height)
        and ``meta["path"]`` the file read (absent for bytes).

    Raises:
        ImageReadError: Missing, empty, corrupt, truncated, unsupported or mislabelled file.
        UnsafeInputError: File or declared pixel count above ``limits``.
    """
    if target_size is not None and target_size < 1:
        raise XrayfmError(f"target_size must be a positive number of pixels, not {target_size}")
    src, fmt = _checked(source, limits, name)
    path = src.path
    suffix = path.suffix.lower() if path is not None else None
    if (
        check_extension
        and suffix is not None
        and suffix not in EXTENSIONS[fmt]
        and (suffix in IMAGE_SUFFIXES or fmt != "dicom")
    ):
        raise ImageReadError(
            f"{src.label}: extension {suffix or '(none)'!r} does not match its content ({fmt.upper()}); "
            "rename the file to match its content (or read it with check_extension=False in Python)"
        )
    if fmt == "dicom":
        pixels, meta = read_dicom(src, limits=limits, voi=voi, target_size=target_size)
    else:
        pixels, meta = read_raster(src, limits=limits, intensity=intensity, target_size=target_size)
    if path is not None:
        meta["path"] = str(path)
    return XrayImage(pixels=pixels, meta=meta)
