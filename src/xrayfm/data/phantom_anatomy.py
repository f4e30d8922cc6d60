"""Phantom building blocks: seeded streams, smooth noise, lungs, heart, patient and canvas.

The bottom layer of the phantom generator, whose model :mod:`xrayfm.data.phantom` documents.
Imports run one way: ``phantom_anatomy`` <- :mod:`~xrayfm.data.phantom_findings` <-
:mod:`~xrayfm.data.phantom` <- :mod:`~xrayfm.data.phantom_io`; this module imports none of them.
Everything here is in the canonical frame described in :mod:`xrayfm.data.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIDES: tuple[str, str] = ("right", "left")  # the patient's sides, indexed like Patient.lungs
LUNG_NAMES: tuple[str, str] = ("right_lung", "left_lung")  # mask names of SIDES
FIELD_OF_VIEW_MM = 358.0  # image width in mm (NIH-like: 1024 px at 0.35 mm)
MASS_DIAMETER_MM = 30.0  # radiological nodule / mass threshold


@dataclass
class Lesion:
    """One lesion: its finding, binary mask, tight box (x_min, y_min, x_max, y_max) and facts."""

    label: str
    mask: np.ndarray
    box: tuple[float, float, float, float]
    attrs: dict[str, Any] = field(default_factory=dict)


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """The random stream of one part of one case, independent of every other stream.

    Args:
        seed: Series seed.
        *keys: What the stream is for (a part number, then the case or patient index).

    Returns:
        A generator seeded with ``SeedSequence([seed, *keys])``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Smoothstep ``3t^2 - 2t^3`` of ``t`` clipped to [0, 1].

    Args:
        t: Any array.

    Returns:
        The smoothstep, 0 below 0 and 1 above 1.
    """
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight pixel bounds of a non-empty boolean mask.

    Args:
        mask: (H, W) bool, at least one pixel set.

    Returns:
        ``(x_min, y_min, x_max, y_max)`` with ``x_max`` / ``y_max`` exclusive.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise (about unit variance): a cells x cells grid, bilinearly upsampled.

    Args:
        rng: Stream the grid values are drawn from.
        shape: Output (H, W).
        cells: Grid side (more cells, finer noise).

    Returns:
        float32 (H, W) noise.
    """

    def weights(n: int) -> np.ndarray:
        pos = (np.arange(n) + 0.5) / n * (cells - 1)
        return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(cells)[None, :])).astype(np.float32)

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return weights(shape[0]) @ grid @ weights(shape[1]).T


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (a no-op below ``sigma`` 0.3).

    Args:
        img: float32 (H, W) image.
        sigma: Standard deviation in pixels.

    Returns:
        The blurred float32 image (``img`` itself when ``sigma`` < 0.3).
    """
    if sigma < 0.3:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    h, w = img.shape
    pad = np.pad(img, r, mode="edge")
    tmp = sum(k[i] * pad[i : i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * tmp[:, i : i + w] for i in range(2 * r + 1)).astype(np.float32)


# ----------------------------------------------------------------------------------- anatomy


@dataclass
class Lung:
    """One hemithorax in lung-local coordinates: ``x`` = lateral distance from the midline.

    Attributes:
        side: -1 for the patient's right (image left), +1 for the patient's left (image right).
        xc: Lateral centre of the lung field.
        a: Half width of the lung field.
        vc: Vertical centre (the widest level).
        b_top: Height from the centre to the apex.
        b_bot: Height from the centre to the bottom of the field.
        dome_edge: Level of the diaphragm at the costophrenic angle.
        dome_height: Rise of the diaphragm dome above ``dome_edge``.
    """

    side: int
    xc: float
    a: float
    vc: float
    b_top: float
    b_bot: float
    dome_edge: float
    dome_height: float

    def local(self, u: np.ndarray) -> np.ndarray:
        """Lung-local ``x`` (distance from the midline towards this side) of canonical ``u``."""
        return u * self.side

    def field(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Superellipse level (< 1 inside), narrower towards the apex."""
        dv = v - self.vc
        top = dv < 0
        a = self.a * (1.0 - 0.28 * np.clip(-dv / self.b_top, 0.0, 1.0))
        zx = np.abs((x - self.xc) / a)
        zv = np.abs(dv / np.where(top, self.b_top, self.b_bot))
        return zx * zx * zx + zv * zv * zv

    def dome(self, x: np.ndarray) -> np.ndarray:
        """Level of the diaphragm under lung-local ``x``."""
        return self.dome_edge - self.dome_height * (1.0 - ((x - self.xc) / self.a) ** 2)

    def medial(self, v: np.ndarray) -> np.ndarray:
        """Mediastinal border: aortic knob on the patient's left, SVC bulge on the right."""
        if self.side > 0:
            return 0.085 + 0.075 * np.exp(-(((v + 0.3) / 0.08) ** 2))
        return 0.075 + 0.03 * np.exp(-(((v + 0.35) / 0.15) ** 2))

    def inside(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Hemithorax air space (before the heart is cut out)."""
        return (self.field(x, v) < 1.0) & (v < self.dome(x)) & (x > self.medial(v))

    @property
    def lateral(self) -> float:
        """Lung-local ``x`` of the lateral chest wall."""
        return self.xc + self.a


@dataclass
class Heart:
    """The cardiac silhouette: a rotated ellipse in canonical coordinates.

    Attributes:
        u: Horizontal centre.
        v: Vertical centre.
        a: Semi-axis along the tilted long axis.
        b: Semi-axis across it.
        angle: Tilt in radians (apex down to the patient's left).
    """

    u: float
    v: float
    a: float
    b: float
    angle: float

    def field(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Ellipse level at canonical ``(u, v)`` (< 1 inside)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        du, dv = u - self.u, v - self.v
        p, q = du * c + dv * s, -du * s + dv * c
        return (p / self.a) ** 2 + (q / self.b) ** 2


@dataclass
class Patient:
    """What stays the same across the images of one patient.

    Attributes:
        sex: ``"F"`` or ``"M"``.
        age: Age in years at the first image.
        body_w: Half width of the body.
        lungs: The patient's right and left lung, in that order.
        heart_shape: Depth below the dome, aspect b/a, tilt, shift to the patient's left.
        ctr_normal: Cardiothoracic ratio without cardiomegaly.
        ctr_enlarged: Cardiothoracic ratio with cardiomegaly.
    """

    sex: str
    age: int
    body_w: float
    lungs: tuple[Lung, Lung]
    heart_shape: tuple[float, float, float, float]
    ctr_normal: float
    ctr_enlarged: float


def draw_patient(seed: int, patient: int, female_fraction: float) -> Patient:
    """Draw the anatomy of patient ``patient`` of series ``seed`` from its own stream.

    Args:
        seed: Series seed.
        patient: Patient number.
        female_fraction: Probability that the patient is female.

    Returns:
        The patient.
    """
    rng = seeded_rng(seed, 1, patient)
    female = rng.random() < female_fraction
    scale = rng.uniform(0.92, 1.03) * (0.97 if female else 1.0)
    height = rng.uniform(0.93, 1.05)
    dome_edge = rng.uniform(0.46, 0.56) * height
    lungs = []
    for side in (-1, 1):
        xc, a = 0.42 * scale * rng.uniform(0.97, 1.03), 0.36 * scale * rng.uniform(0.96, 1.04)
        edge = dome_edge - (0.05 if side < 0 else 0.0)
        b_top = 0.7 * height * rng.uniform(0.97, 1.03)
        lungs.append(Lung(side, xc, a, 0.0, b_top, edge + 0.14, edge, rng.uniform(0.13, 0.2)))
    return Patient(
        sex="F" if female else "M",
        age=int(rng.integers(18, 86)),
        body_w=rng.uniform(0.86, 0.96) * scale,
        lungs=(lungs[0], lungs[1]),
        heart_shape=(rng.uniform(0.05, 0.1), rng.uniform(0.72, 0.85), rng.uniform(0.3, 0.5), rng.uniform(0.22, 0.32)),
        ctr_normal=rng.uniform(0.37, 0.46),
        ctr_enlarged=rng.uniform(0.56, 0.68),
    )


def make_heart(p: Patient, ctr: float, dome: float) -> Heart:
    """The heart of patient ``p`` at cardiothoracic ratio ``ctr``, sitting on the left dome.

    Args:
        p: The patient (thorax width and heart shape).
        ctr: Cardiothoracic ratio (heart width / thorax width).
        dome: Level of the left diaphragm dome edge.

    Returns:
        The heart.
    """
    thorax = sum(lung.lateral for lung in p.lungs)
    v, aspect, angle, shift = p.heart_shape
    unit = math.hypot(math.cos(angle), aspect * math.sin(angle))
    a = ctr * thorax / 2 / unit
    b = aspect * a
    # the heart sits on the left dome, its apex tilted down to the patient's left (image right)
    height = math.hypot(a * math.sin(angle), b * math.cos(angle))
    return Heart(u=shift * ctr * thorax / 2 * 1.2, v=dome + v - height, a=a, b=b, angle=angle)


# ----------------------------------------------------------------------------------- rendering


class Canvas:
    """Pixel grid with its canonical coordinates and helpers to work on a sub-window.

    Args:
        n: Image side in pixels.
        angle: Rotation of the pose in radians.
        shift: Shift of the pose (u, v) in canonical units.
        scale: Scale of the pose.
    """

    def __init__(self, n: int, angle: float, shift: tuple[float, float], scale: float) -> None:
        self.n = n
        self.angle, self.shift, self.scale = angle, shift, scale
        g = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
        c, s = math.cos(angle), math.sin(angle)
        x, y = g[None, :] - shift[0], g[:, None] - shift[1]
        self.u = ((c * x + s * y) / scale).astype(np.float32)
        self.v = ((-s * x + c * y) / scale).astype(np.float32)

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Pixel ``(column, row)`` of the canonical point ``(u, v)``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = (c * u - s * v) * self.scale + self.shift[0]
        y = (s * u + c * v) * self.scale + self.shift[1]
        return (x + 1) / 2 * self.n, (y + 1) / 2 * self.n

    def window(self, u0: float, v0: float, u1: float, v1: float) -> tuple[slice, slice]:
        """Pixel slices covering the canonical rectangle (with a 2-px margin)."""
        pts = [self.to_pixel(u, v) for u in (u0, u1) for v in (v0, v1)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo = lambda t: max(0, int(math.floor(min(t))) - 2)  # noqa: E731
        hi = lambda t: min(self.n, int(math.ceil(max(t))) + 2)  # noqa: E731
        return slice(lo(ys), max(lo(ys), hi(ys))), slice(lo(xs), max(lo(xs), hi(xs)))
