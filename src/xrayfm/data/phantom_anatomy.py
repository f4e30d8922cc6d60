"""Phantom building blocks: seeded streams, smooth noise, lungs, heart, patient and canvas.

Internal to :mod:`xrayfm.data.phantom` (which documents the model); split out to keep modules
small. Everything here is in the canonical frame described there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from xrayfm.data.phantom import PhantomConfig

LUNG_NAMES: tuple[str, str] = ("right_lung", "left_lung")  # the patient's sides
FIELD_OF_VIEW_MM = 358.0  # image width in mm (NIH-like: 1024 px at 0.35 mm)
MASS_DIAMETER_MM = 30.0  # radiological nodule / mass threshold


@dataclass
class Lesion:
    """One lesion: its finding, binary mask, tight box (x_min, y_min, x_max, y_max) and facts."""

    label: str
    mask: np.ndarray
    box: tuple[float, float, float, float]
    attrs: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of ``t`` clipped to [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise (about unit variance): a cells x cells grid, bilinearly upsampled."""

    def weights(n: int) -> np.ndarray:
        pos = (np.arange(n) + 0.5) / n * (cells - 1)
        return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(cells)[None, :])).astype(np.float32)

    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return weights(shape[0]) @ grid @ weights(shape[1]).T


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
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
class _Lung:
    """One hemithorax in lung-local coordinates: ``x`` = lateral distance from the midline."""

    side: int  # -1: patient's right (image left), +1: patient's left (image right)
    xc: float
    a: float
    vc: float
    b_top: float
    b_bot: float
    dome_edge: float
    dome_height: float

    def local(self, u: np.ndarray) -> np.ndarray:
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
        return self.xc + self.a


@dataclass
class _Heart:
    u: float
    v: float
    a: float
    b: float
    angle: float

    def field(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        du, dv = u - self.u, v - self.v
        p, q = du * c + dv * s, -du * s + dv * c
        return (p / self.a) ** 2 + (q / self.b) ** 2


@dataclass
class _Patient:
    sex: str
    age: int
    body_w: float
    lungs: tuple[_Lung, _Lung]
    heart_shape: tuple[float, float, float, float]  # depth below the dome, aspect b/a, tilt, shift to the left
    ctr_normal: float
    ctr_enlarged: float


def _draw_patient(seed: int, patient: int, cfg: PhantomConfig) -> _Patient:
    rng = _rng(seed, 1, patient)
    female = rng.random() < cfg.female_fraction
    scale = rng.uniform(0.92, 1.03) * (0.97 if female else 1.0)
    height = rng.uniform(0.93, 1.05)
    dome_edge = rng.uniform(0.46, 0.56) * height
    lungs = []
    for side in (-1, 1):
        xc, a = 0.42 * scale * rng.uniform(0.97, 1.03), 0.36 * scale * rng.uniform(0.96, 1.04)
        edge = dome_edge - (0.05 if side < 0 else 0.0)
        b_top = 0.7 * height * rng.uniform(0.97, 1.03)
        lungs.append(_Lung(side, xc, a, 0.0, b_top, edge + 0.14, edge, rng.uniform(0.13, 0.2)))
    return _Patient(
        sex="F" if female else "M",
        age=int(rng.integers(18, 86)),
        body_w=rng.uniform(0.86, 0.96) * scale,
        lungs=(lungs[0], lungs[1]),
        heart_shape=(rng.uniform(0.05, 0.1), rng.uniform(0.72, 0.85), rng.uniform(0.3, 0.5), rng.uniform(0.22, 0.32)),
        ctr_normal=rng.uniform(0.37, 0.46),
        ctr_enlarged=rng.uniform(0.56, 0.68),
    )


def _make_heart(p: _Patient, ctr: float, dome: float) -> _Heart:
    thorax = sum(lung.lateral for lung in p.lungs)
    v, aspect, angle, shift = p.heart_shape
    unit = math.hypot(math.cos(angle), aspect * math.sin(angle))
    a = ctr * thorax / 2 / unit
    b = aspect * a
    # the heart sits on the left dome, its apex tilted down to the patient's left (image right)
    height = math.hypot(a * math.sin(angle), b * math.cos(angle))
    return _Heart(u=shift * ctr * thorax / 2 * 1.2, v=dome + v - height, a=a, b=b, angle=angle)


# ----------------------------------------------------------------------------------- rendering


class _Canvas:
    """Pixel grid with its canonical coordinates and helpers to work on a sub-window."""

    def __init__(self, n: int, angle: float, shift: tuple[float, float], scale: float) -> None:
        self.n = n
        self.angle, self.shift, self.scale = angle, shift, scale
        g = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
        c, s = math.cos(angle), math.sin(angle)
        x, y = g[None, :] - shift[0], g[:, None] - shift[1]
        self.u = ((c * x + s * y) / scale).astype(np.float32)
        self.v = ((-s * x + c * y) / scale).astype(np.float32)

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
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
