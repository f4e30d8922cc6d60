"""Mask sources: how a record's segmentation target is produced on demand.

Public datasets store masks in several ways (one label-map PNG, one file per organ, run-length
strings). Each source here is a small picklable object returning uint8 (M, H, W) with 1 = class,
0 = background and 255 = ignore, so DataLoader workers can carry it. Each lists the files it
reads in ``files``, so a dataset can check them against its root before any is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from xrayfm.data.sample import MASK_IGNORE
from xrayfm.errors import DatasetError, ImageReadError
from xrayfm.io.limits import DEFAULT_LIMITS

NO_MASK_RLE: tuple[str, ...] = ("", "-1", "nan")  # run-length strings that mean "no mask"
#: 8-connectivity: regions touching at a corner are one component, hence one box.
CONNECTIVITY = np.ones((3, 3), dtype=bool)


def read_label_map(path: Path) -> np.ndarray:
    """Read a mask file (PNG/GIF/BMP/TIFF) as a 2-D uint8 array of raw values.

    Raises:
        ImageReadError: Missing, corrupt or oversized file.
    """
    DEFAULT_LIMITS.check_file(path)
    try:
        with Image.open(path) as im:
            DEFAULT_LIMITS.check_dims(path, *im.size)
            im.load()
            if im.mode in ("P", "PA") and _grey_palette(im):
                im = im.convert("L")  # e.g. SCR GIFs, where "white" need not be index 1
            elif im.mode in ("RGB", "RGBA", "LA"):
                im = im.convert("L")
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: unreadable mask ({exc})") from None
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: mask must be single-channel, got shape {arr.shape}")
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def _grey_palette(im: Image.Image) -> bool:
    """True when a palette image's colours are all grey, so grey values (not indices) matter.

    Palettes with colours (VOC-style label maps) keep their indices as class values.
    """
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(pal)) and bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())


@dataclass(frozen=True)
class LabelMapMask:
    """One label-map file; channel ``i`` is ``value == values[i]``; ``ignore_value`` -> 255.

    A binary 0/255 mask is read with ``values=(255,)`` and ``ignore_value=None``.
    """

    path: Path
    values: tuple[int, ...] = (1,)
    ignore_value: int | None = MASK_IGNORE

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this source reads."""
        return (self.path,)

    def __call__(self) -> np.ndarray:
        raw = read_label_map(self.path)
        out = np.stack([(raw == v) for v in self.values]).astype(np.uint8)
        if self.ignore_value is not None and self.ignore_value not in self.values:
            out[:, raw == self.ignore_value] = MASK_IGNORE
        return out


@dataclass(frozen=True)
class FileMasks:
    """One binary mask file per channel: non-zero = class; ``ignore_value`` pixels -> 255.

    Covers 0/1 and 0/255 masks alike. With ``ignore_value`` set (e.g. 255 for V7 "ignore"
    regions), those pixels are marked ignore in every channel instead of counted as class.
    """

    paths: tuple[Path, ...]
    ignore_value: int | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this source reads."""
        return self.paths

    def __call__(self) -> np.ndarray:
        raws = [read_label_map(p) for p in self.paths]
        shapes = {r.shape for r in raws}
        if len(shapes) > 1:
            raise DatasetError(f"mask files {[str(p) for p in self.paths]} differ in size {sorted(shapes)}")
        out = np.stack([(r != 0) & (r != self.ignore_value) for r in raws]).astype(np.uint8)
        if self.ignore_value is not None:
            ignore = np.logical_or.reduce([r == self.ignore_value for r in raws])
            out[:, ignore] = MASK_IGNORE
        return out


@dataclass(frozen=True)
class UnionMask:
    """Several binary files per channel, merged by union (e.g. Montgomery's left + right lung).

    ``channels[i]`` lists the files whose non-zero pixels form channel ``i``.
    """

    channels: tuple[tuple[Path, ...], ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """The files this source reads."""
        return tuple(p for files in self.channels for p in files)

    def __call__(self) -> np.ndarray:
        planes = []
        for files in self.channels:
            maps = [read_label_map(p) > 0 for p in files]
            shapes = {m.shape for m in maps}
            if len(shapes) > 1:
                raise DatasetError(f"mask files {list(files)} differ in size {sorted(shapes)}")
            planes.append(np.logical_or.reduce(maps))
        return np.stack(planes).astype(np.uint8)


def parse_rle(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a run-length string into its starts and lengths, as written.

    Only the syntax is checked here; whether the runs fit an image depends on the convention
    (relative or absolute starts) and is left to the caller.

    Args:
        rle: Space-separated ``start length`` pairs; a string in :data:`NO_MASK_RLE` (after
            stripping spaces) means no mask.

    Returns:
        int64 ``(starts, lengths)``, both empty for no mask.

    Raises:
        DatasetError: A non-integer token or an odd number of values.
    """
    text = str(rle).strip()
    if text in NO_MASK_RLE:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        nums = np.asarray([int(t) for t in text.split()], dtype=np.int64)
    except ValueError:
        raise DatasetError(f"malformed RLE string (non-integer token): {text[:60]!r}") from None
    if nums.size % 2:
        raise DatasetError(f"malformed RLE string (odd number of values): {text[:60]!r}")
    return nums[0::2], nums[1::2]


def decode_rle(rle: str, width: int, height: int, *, relative: bool = True) -> np.ndarray:
    """Decode a run-length string into a (height, width) uint8 mask.

    Args:
        rle: Space-separated ``start length`` pairs; ``"-1"`` or empty means no mask.
        width: Image width.
        height: Image height.
        relative: SIIM-ACR style, where each start is an offset from the end of the previous
            run. False for the absolute starts of most Kaggle competitions. Pixels are
            numbered column-major (down, then across), as both conventions do.

    Returns:
        uint8 mask with 1 inside runs.

    Raises:
        DatasetError: Malformed string or runs outside the image.
    """
    return np.ascontiguousarray(_decode_rle_flat(rle, width, height, relative=relative).reshape(width, height).T)


def _decode_rle_flat(rle: str, width: int, height: int, *, relative: bool) -> np.ndarray:
    """Column-major flat mask of one RLE string (see :func:`decode_rle`)."""
    mask = np.zeros(width * height, dtype=np.uint8)
    pos = 0
    for start, length in zip(*parse_rle(rle)):
        begin = pos + start if relative else start - 1
        end = begin + length
        if begin < 0 or length < 0 or end > mask.size:
            raise DatasetError(f"RLE run {start} {length} falls outside a {width}x{height} image")
        mask[begin:end] = 1
        pos = end
    return mask


@dataclass(frozen=True)
class RleMask:
    """Union of run-length strings for one channel (SIIM-ACR stores one row per region)."""

    rles: tuple[str, ...]
    width: int
    height: int
    relative: bool = True

    @property
    def files(self) -> tuple[Path, ...]:
        """No file: the runs are held in the record itself."""
        return ()

    def __call__(self) -> np.ndarray:
        flat = np.zeros(self.width * self.height, np.uint8)
        for rle in self.rles:
            flat |= _decode_rle_flat(rle, self.width, self.height, relative=self.relative)
        return np.ascontiguousarray(flat.reshape(self.width, self.height).T)[None]


def stack_masks(sources: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate (M_i, H, W) masks along channels, checking sizes agree."""
    shapes = {s.shape[1:] for s in sources}
    if len(shapes) > 1:
        raise DatasetError(f"mask channels differ in size: {sorted(shapes)}")
    return np.concatenate(list(sources), axis=0)


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """xyxy boxes (float32 (N, 4), exclusive ends) of the 8-connected components of a 2-D mask.

    Datasets that publish masks but no boxes (CANDID-PTX, SIIM-ACR) derive their detection
    targets this way, as Foundation X does: one box per region, overlapping regions merged.
    """
    labelled, _ = ndimage.label(mask, structure=CONNECTIVITY)
    boxes = [(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in ndimage.find_objects(labelled)]
    return np.asarray(boxes, np.float32).reshape(-1, 4)
