"""Anatomical landmarks derived from lung and heart masks, for Eve's locality measure.

The Adam / Eve paper places patches on landmarks annotated by hand; public sets carry lung masks
instead, so the landmarks here are the corners of those masks. Images are read in the standard
frontal orientation (the patient's right on the image's left). Per lung:

- ``apex``: the top of the lung (the pixel of its topmost row nearest the median column of its top 2%);
- ``costophrenic``: the costophrenic angle, the lowest lateral point (the pixel maximising
  twice the height-normalised depth plus the width-normalised lateral distance);
- ``cardiophrenic``: the cardiophrenic angle, the lowest medial point (the same with medial distance);
- ``hilum``: the hilar point, the most medial pixel at mid-height.

With a heart mask (the phantom's) come ``heart apex`` (its lowest point on the patient's left) and
``heart right border`` (its most lateral point on the patient's right). Names carry the patient's
side: ``right apex``, ``left costophrenic``...
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from xrayfm.errors import XrayfmError

LUNG_LANDMARKS: tuple[str, ...] = ("apex", "costophrenic", "cardiophrenic", "hilum")
HEART_LANDMARKS: tuple[str, ...] = ("heart apex", "heart right border")
#: A lung smaller than this share of the image is taken as a failed mask.
MIN_LUNG_SHARE = 0.005
#: Weight of depth against sideways distance at the angles: the left lung's medial border,
#: pushed out by the heart, reaches furthest in at mid-height; with equal weights that point
#: (not the cardiophrenic angle) won on 103 of JSRT's 247 masks, with twice the weight on none.
DEPTH_WEIGHT = 2.0
#: The mediastinum's column holds at most this share of a typical mask column's lung pixels.
MAX_GAP_SHARE = 0.5


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def split_lungs(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a two-lung mask into (image-left, image-right) lungs: at the column of fewest lung
    pixels in the middle third of the mask's width (the mediastinum, also where masks that
    include the lung behind the heart touch), each side then its largest component.

    Args:
        lungs: bool (H, W) mask of both lungs.

    Returns:
        The two masks, or None when the middle third does not narrow to half a typical
        column's lung pixels or one side holds less than a fifth of the other (one lung
        visible, or no mask).
    """
    cols = np.flatnonzero(lungs.any(axis=0))
    if cols.size < 3:
        return None
    x0, x1 = int(cols[0]), int(cols[-1])
    third = (x1 - x0) // 3
    profile = lungs[:, x0 + third : x1 - third + 1].sum(axis=0)
    if profile.min() > MAX_GAP_SHARE * np.median(lungs[:, x0 : x1 + 1].sum(axis=0)):
        return None  # no narrowing between two lungs: one lung, or a mask of something else
    gap = np.flatnonzero(profile == profile.min())
    cut = x0 + third + int(gap[len(gap) // 2])
    left, right = np.zeros_like(lungs, dtype=bool), np.zeros_like(lungs, dtype=bool)
    left[:, :cut], right[:, cut + 1 :] = lungs[:, :cut], lungs[:, cut + 1 :]
    left, right = largest_component(left), largest_component(right)
    a, b = int(left.sum()), int(right.sum())
    if min(a, b) < 0.2 * max(a, b) or min(a, b) == 0:
        return None
    return left, right


def _corner(ys: np.ndarray, xs: np.ndarray, outward: int) -> tuple[int, int]:
    """The lowest pixel furthest towards ``outward`` (+1 image right, -1 image left): the
    maximum of :data:`DEPTH_WEIGHT` x depth + sideways distance, each normalised by the mask's
    extent."""
    height = max(int(ys.max() - ys.min()), 1)
    width = max(int(xs.max() - xs.min()), 1)
    side = (xs - xs.min()) / width if outward > 0 else (xs.max() - xs) / width
    i = int(np.argmax(DEPTH_WEIGHT * (ys - ys.min()) / height + side))
    return int(ys[i]), int(xs[i])


def lung_landmarks(lung: np.ndarray, medial: int) -> dict[str, tuple[int, int]]:
    """The four landmarks of one lung as (row, column) pixels.

    Args:
        lung: bool (H, W) mask of one lung.
        medial: +1 when the patient's midline is to the image's right of this lung (the
            image-left lung), -1 otherwise.

    Raises:
        XrayfmError: The mask is empty.
    """
    ys, xs = np.nonzero(lung)
    if ys.size == 0:
        raise XrayfmError("lung_landmarks: empty lung mask")
    top, bottom = int(ys.min()), int(ys.max())
    band = ys <= top + 0.02 * (bottom - top)
    crest = xs[ys == top]
    apex_x = int(crest[np.argmin(np.abs(crest - np.median(xs[band])))])
    mid = (top + bottom) // 2
    row = np.flatnonzero(lung[mid])
    hilum_x = int(row.max() if medial > 0 else row.min())
    return {
        "apex": (top, apex_x),
        "costophrenic": _corner(ys, xs, -medial),
        "cardiophrenic": _corner(ys, xs, medial),
        "hilum": (mid, hilum_x),
    }


def heart_landmarks(heart: np.ndarray) -> dict[str, tuple[int, int]]:
    """``heart apex`` (lowest point towards the image's right, the patient's left) and ``heart
    right border`` (the image-leftmost point, at its median row) of a heart mask.

    Raises:
        XrayfmError: The mask is empty.
    """
    ys, xs = np.nonzero(heart)
    if ys.size == 0:
        raise XrayfmError("heart_landmarks: empty heart mask")
    leftmost = xs == xs.min()
    return {
        "heart apex": _corner(ys, xs, +1),
        "heart right border": (int(np.median(ys[leftmost])), int(xs.min())),
    }


def find_landmarks(lungs: np.ndarray, heart: np.ndarray | None = None) -> dict[str, tuple[int, int]]:
    """Every landmark an image's masks define, as (row, column) pixels.

    Args:
        lungs: bool (H, W) mask of both lungs (one class, as public sets store them).
        heart: bool (H, W) heart mask, or None.

    Returns:
        ``{"right apex": (y, x), ..., "left hilum": ..., "heart apex": ...}``; empty when the
        lungs cannot be told apart or are too small (a failed or lateral-view mask), heart
        landmarks only when the heart mask is not empty.
    """
    out: dict[str, tuple[int, int]] = {}
    pair = split_lungs(lungs.astype(bool))
    if pair is None or min(int(p.sum()) for p in pair) < MIN_LUNG_SHARE * lungs.size:
        return out
    for side, lung, medial in (("right", pair[0], +1), ("left", pair[1], -1)):
        out |= {f"{side} {name}": point for name, point in lung_landmarks(lung, medial).items()}
    if heart is not None and heart.any():
        out |= heart_landmarks(largest_component(heart.astype(bool)))
    return out
