"""A deterministic synthetic chest-radiograph generator (the "phantom").

Each case is drawn from ``(seed, index)`` alone, so case 17 is the same image whatever else is
generated, in whatever order. Anatomy (body, lungs, heart and mediastinum, spine, ribs,
clavicles, diaphragm) is built from analytic shapes in a *canonical* frame (``u`` left to right,
``v`` top to bottom, both in [-1, 1]) which a per-image pose (rotation, shift, scale) maps onto
the pixel grid; exposure, blur and noise vary per image. Images are PA/AP views as displayed:
the patient's right is on the image's left.

Findings change pixels *and* labels, and every lesion comes with its mask and box:

* ``nodule``: a bright round blob inside a lung (a *mass* when its diameter exceeds 30 mm);
* ``effusion``: fluid at a lung base with a meniscus, blunting the costophrenic angle;
* ``pneumothorax``: a dark rim without lung markings outside a visible pleural line;
* ``cardiomegaly``: a heart wider than half the thorax (cardiothoracic ratio > 0.5; global,
  no box);
* ``consolidation``: a patchy bright region inside a lung.

Lesion masks lie inside the lung masks (which cover each hemithorax's air space, lesions
included) and boxes are the tight pixel bounds ``[x_min, x_max)`` of their masks. Each random
part (patient anatomy, pose, which findings, each finding's shape, texture, noise) draws from
its own stream, so switching one finding off in :class:`PhantomConfig` leaves the rest of the
image unchanged. Synthetic data: for tests and demos, never for claims about real radiographs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xrayfm.errors import XrayfmError

FINDINGS: tuple[str, ...] = ("nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation")
BOX_CLASSES: tuple[str, ...] = ("nodule", "effusion", "pneumothorax", "consolidation")
DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.25, "effusion": 0.2, "pneumothorax": 0.15, "cardiomegaly": 0.2, "consolidation": 0.2,
}  # fmt: skip
FIELD_OF_VIEW_MM = 358.0  # image width in mm (NIH-like: 1024 px at 0.35 mm)
MASS_DIAMETER_MM = 30.0  # radiological nodule / mass threshold
LUNG_NAMES: tuple[str, str] = ("right_lung", "left_lung")  # the patient's sides


@dataclass(frozen=True)
class PhantomConfig:
    """What the generator varies and how much.

    Attributes:
        size: Image side in pixels (square images).
        prevalence: Probability of each finding (missing names: 0). 0 / 1 force a finding
            off / on (see :meth:`only`).
        images_per_patient: Consecutive indices share a patient (same anatomy, sex, age).
        ap_fraction: Share of AP views (slightly magnified heart, higher clavicles).
        female_fraction: Share of female patients (breast shadows).
        noise: Scale of the quantum noise (0 = none).
        blur: Scale of the blur (0 = none).
        pose: Scale of the rotation / shift / scale jitter (0 = every image centred).
        exposure: Scale of the exposure (window, gamma) jitter (0 = fixed).
    """

    size: int = 256
    prevalence: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PREVALENCE))
    images_per_patient: int = 2
    ap_fraction: float = 0.2
    female_fraction: float = 0.5
    noise: float = 1.0
    blur: float = 1.0
    pose: float = 1.0
    exposure: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.prevalence) - set(FINDINGS))
        if unknown:
            raise XrayfmError(f"unknown finding(s) {unknown} in prevalence; choose from {FINDINGS}")
        if any(not 0.0 <= float(p) <= 1.0 for p in self.prevalence.values()):
            raise XrayfmError(f"prevalences must lie in [0, 1], got {dict(self.prevalence)}")
        if self.size < 32:
            raise XrayfmError(f"phantom size must be at least 32 px, got {self.size}")
        if self.images_per_patient < 1:
            raise XrayfmError(f"images_per_patient must be >= 1, got {self.images_per_patient}")

    @classmethod
    def only(cls, *findings: str, **kwargs: Any) -> PhantomConfig:
        """A config where exactly ``findings`` are present (probability 1) and no other."""
        unknown = sorted(set(findings) - set(FINDINGS))
        if unknown:
            raise XrayfmError(f"unknown finding(s) {unknown}; choose from {FINDINGS}")
        return cls(prevalence={f: float(f in findings) for f in FINDINGS}, **kwargs)


@dataclass
class Lesion:
    """One lesion: its finding, binary mask, tight box (x_min, y_min, x_max, y_max) and facts."""

    label: str
    mask: np.ndarray
    box: tuple[float, float, float, float]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhantomCase:
    """One generated radiograph with every label kind.

    Attributes:
        image: float32 (H, W) in [0, 1], bright = dense.
        labels: float32 (5,) over :data:`FINDINGS`.
        anatomy: bool (H, W) masks ``right_lung``, ``left_lung`` (the patient's sides),
            ``lungs`` (their union) and ``heart``.
        lesions: Lesions with masks and boxes (cardiomegaly has none).
        ctr: Cardiothoracic ratio as drawn (heart width / thorax width).
    """

    index: int
    seed: int
    id: str
    patient: int
    followup: int
    view: str
    sex: str
    age: int
    image: np.ndarray
    labels: np.ndarray
    anatomy: dict[str, np.ndarray]
    lesions: list[Lesion]
    ctr: float
    pixel_spacing_mm: float

    @property
    def patient_id(self) -> str:
        """Patient identifier shared by all images of a patient."""
        return f"P{self.patient:05d}"

    @property
    def findings(self) -> tuple[str, ...]:
        """Names of the findings present."""
        return tuple(f for f, y in zip(FINDINGS, self.labels) if y > 0)

    @property
    def lesion_mask(self) -> np.ndarray:
        """Union of all lesion masks (bool, H x W)."""
        out = np.zeros(self.image.shape, bool)
        for les in self.lesions:
            out |= les.mask
        return out

    @property
    def boxes(self) -> np.ndarray:
        """float32 (N, 4) xyxy lesion boxes in pixels."""
        return np.asarray([les.box for les in self.lesions], np.float32).reshape(-1, 4)

    @property
    def box_labels(self) -> np.ndarray:
        """int64 (N,) indices of the boxes' classes in :data:`BOX_CLASSES`."""
        return np.asarray([BOX_CLASSES.index(les.label) for les in self.lesions], np.int64)

    def to_sample(self) -> dict[str, Any]:
        """The case as a :class:`~xrayfm.data.sample.Sample` (mask channels: lungs, heart, lesions),
        the same as the ``phantom`` adapter reads back from the native layout."""
        import torch

        mask = np.stack([self.anatomy["lungs"], self.anatomy["heart"], self.lesion_mask]).astype(np.uint8)
        h, w = self.image.shape
        return {
            "image": torch.from_numpy(self.image.copy())[None],
            "labels": torch.from_numpy(self.labels.copy()),
            "mask": torch.from_numpy(mask),
            "boxes": torch.from_numpy(self.boxes),
            "box_labels": torch.from_numpy(self.box_labels),
            "meta": {"id": self.id, "source": "phantom", "patient_id": self.patient_id, "view": self.view,
                     "sex": self.sex, "age": self.age, "size": [w, h]},  # fmt: skip
        }


# ----------------------------------------------------------------------------------- helpers


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
        g = ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0)
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


def _place(scene: _Scene, rng: np.random.Generator, k: int, margin: float) -> tuple[float, float] | None:
    """A canonical point whose ``margin`` neighbourhood lies in lung ``k`` (outside the heart and
    earlier lesions), or None when 96 random tries all fail."""
    lung, heart, n = scene.lungs[k], scene.heart, 96
    x = rng.uniform(lung.xc - lung.a, lung.lateral, n)
    v = rng.uniform(lung.vc - lung.b_top, lung.dome_edge, n)
    ok = lung.inside(x, v)
    for ang in np.linspace(0, 2 * np.pi, 9)[:-1]:
        px, pv = x + margin * np.cos(ang), v + margin * np.sin(ang)
        ok &= lung.inside(px, pv) & (heart.field(px * lung.side, pv) > 1.0)
    taken = np.zeros(scene.air.shape, bool)
    for les in scene.lesions:
        taken |= les.mask
    for i in np.flatnonzero(ok):
        col, row = scene.canvas.to_pixel(float(x[i]) * lung.side, float(v[i]))
        r, c = min(int(row), scene.canvas.n - 1), min(int(col), scene.canvas.n - 1)
        if not taken[max(r, 0), max(c, 0)]:
            return float(x[i]) * lung.side, float(v[i])
    return None


def _markings(rng: np.random.Generator, x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vessel-like lines radiating from the hilum, fading to the periphery (1-D pixel lists)."""
    dx, dv = x - 0.16, v + 0.02
    r = np.sqrt(dx * dx + dv * dv) + 1e-3
    nt, nr = 40, 12
    grid = rng.standard_normal((nt + 1) * (nr + 1)).astype(np.float32)
    ti = (np.arctan2(dv, dx) + np.pi) * (nt / (2 * np.pi))
    ri = np.minimum(r * (nr / 0.9), nr - 1e-3)
    t0, r0 = np.minimum(ti.astype(np.int32), nt - 1), ri.astype(np.int32)
    ft, fr = ti - t0, ri - r0
    k = t0 * (nr + 1) + r0
    near = grid[k] * (1 - ft) + grid[k + nr + 1] * ft
    far = grid[k + 1] * (1 - ft) + grid[k + nr + 2] * ft
    val = near * (1 - fr) + far * fr
    ridge = np.clip(1.0 - np.abs(val) / 0.18, 0.0, 1.0)
    return ridge * np.exp(-r / 0.45)


@dataclass
class _Scene:
    """The arrays a case is drawn into; per-lung work happens in that hemithorax's window."""

    canvas: _Canvas
    lungs: list[_Lung]
    heart: _Heart
    windows: list[tuple[slice, slice]]
    air: np.ndarray  # lung air fraction (darkens)
    marks: np.ndarray  # vessel markings
    extra: np.ndarray  # finding density
    masks: dict[str, np.ndarray]
    lesions: list[Lesion] = field(default_factory=list)

    def side(self, k: int) -> tuple[tuple[slice, slice], _Lung, np.ndarray, np.ndarray, np.ndarray]:
        """Window, lung, lung-local x, v and lung mask (windowed) of hemithorax ``k``."""
        sl, lung = self.windows[k], self.lungs[k]
        return sl, lung, lung.local(self.canvas.u[sl]), self.canvas.v[sl], self.masks[LUNG_NAMES[k]][sl]

    def add_lesion(self, label: str, mask: np.ndarray, sl: tuple[slice, slice], **attrs: Any) -> bool:
        """Record a lesion given its windowed mask; False (nothing recorded) when it is empty."""
        if not mask.any():
            return False
        full = np.zeros(self.air.shape, bool)
        full[sl] = mask
        self.lesions.append(Lesion(label, full, _box_of(full), attrs))
        return True


def _draw_lungs(scene: _Scene, rng: np.random.Generator) -> None:
    heart_mask = scene.masks["heart"]
    for k in (0, 1):
        sl, lung = scene.windows[k], scene.lungs[k]
        x, v = lung.local(scene.canvas.u[sl]), scene.canvas.v[sl]
        f, dome, medial = lung.field(x, v), lung.dome(x), lung.medial(v)
        m = (f < 1.0) & (v < dome) & (x > medial) & ~heart_mask[sl]
        full = np.zeros(heart_mask.shape, bool)
        full[sl] = m
        scene.masks[LUNG_NAMES[k]] = full
        depth = _smooth((1.0 - f) * 2.5) * _smooth((dome - v) * 12) * _smooth((x - medial) * 15)
        scene.air[sl] = np.maximum(scene.air[sl], np.where(m, 0.55 + 0.45 * depth, 0.0))
        marks = scene.marks[sl]
        xm, vm = x[m], v[m]
        marks[m] = _markings(rng, xm, vm) + 0.7 * np.exp(-((xm - 0.17) ** 2 + (vm + 0.03) ** 2) / 0.005)  # + hilum
    scene.masks["lungs"] = scene.masks["right_lung"] | scene.masks["left_lung"]


def _pneumothorax(scene: _Scene, rng: np.random.Generator) -> bool:
    """A dark rim without markings between the chest wall and a collapsed lung's pleural line."""
    k = int(rng.random() < 0.5)
    sl, lung, x, v, m = scene.side(k)
    s = rng.uniform(0.68, 0.88)
    cx, cv = lung.xc - 0.5 * lung.a, lung.dome_edge
    f_in = lung.field((x - cx) / s + cx, (v - cv) / s + cv)
    rim = m & (f_in >= 1.0)
    if not scene.add_lesion("pneumothorax", rim, sl, side=("right", "left")[k], collapse=round(1 - s, 3)):
        return False
    scene.air[sl][rim] = 1.05
    scene.marks[sl][rim] = 0.0
    scene.extra[sl] += 0.09 * (m & (np.abs(f_in - 1.0) < 0.09)) + 0.03 * (m & (f_in < 1.0))
    return True


def _effusion(scene: _Scene, rng: np.random.Generator) -> bool:
    """Fluid at one or both lung bases, its meniscus climbing the lateral chest wall."""
    found = False
    for k in [0, 1] if rng.random() < 0.3 else [int(rng.random() < 0.5)]:
        sl, lung, x, v, m = scene.side(k)
        apex = lung.vc - lung.b_top
        level = lung.dome_edge - rng.uniform(0.18, 0.4) * (lung.dome_edge - apex)
        top = level - rng.uniform(0.12, 0.25) * np.clip((x - 0.1) / (lung.lateral - 0.1), 0, 1) ** 2.5
        fluid = m & (v > top)
        if scene.add_lesion("effusion", fluid, sl, side=("right", "left")[k]):
            found = True
            ramp = _smooth((v - top) / 0.05)[fluid]
            scene.air[sl][fluid] *= 1.0 - 0.85 * ramp
            scene.marks[sl][fluid] *= 1.0 - ramp
    return found


def _consolidation(scene: _Scene, rng: np.random.Generator) -> bool:
    """A patchy bright region inside one lung."""
    k = int(rng.random() < 0.5)
    rx, rv = rng.uniform(0.09, 0.17), rng.uniform(0.09, 0.17)
    c = _place(scene, rng, k, 0.5 * min(rx, rv))
    if c is None:
        return False
    cu, cv = c
    sl = scene.canvas.window(cu - rx, cv - rv, cu + rx, cv + rv)
    u, v = scene.canvas.u[sl], scene.canvas.v[sl]
    ell = ((u - cu) / rx) ** 2 + ((v - cv) / rv) ** 2
    patch = _smooth((1.0 - ell) * 2.0 + 0.45 * _value_noise(rng, u.shape, 5) - 0.3)
    lung_mask = scene.masks[LUNG_NAMES[k]][sl]
    if not scene.add_lesion("consolidation", lung_mask & (patch > 0.5), sl, side=("right", "left")[k]):
        return False
    scene.extra[sl] += 0.24 * patch * lung_mask
    return True


def _nodules(scene: _Scene, rng: np.random.Generator) -> bool:
    """One or two round bright blobs; a mass when the diameter exceeds 30 mm."""
    found = False
    for _ in range(1 if rng.random() < 0.8 else 2):
        k = int(rng.random() < 0.5)
        r = math.exp(rng.uniform(math.log(0.022), math.log(0.12)))
        c = _place(scene, rng, k, r * 1.1)
        if c is None:
            continue
        cu, cv = c
        sl = scene.canvas.window(cu - r, cv - r, cu + r, cv + r)
        d2 = ((scene.canvas.u[sl] - cu) ** 2 + (scene.canvas.v[sl] - cv) ** 2) / (r * r)
        diameter = round(2 * r * scene.canvas.scale * FIELD_OF_VIEW_MM / 2, 1)
        mask = (d2 < 1.0) & scene.masks["lungs"][sl]
        attrs = {"side": ("right", "left")[k], "diameter_mm": diameter, "mass": diameter > MASS_DIAMETER_MM}
        if scene.add_lesion("nodule", mask, sl, **attrs):
            found = True
            scene.extra[sl] += rng.uniform(0.2, 0.3) * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    return found


def _body(u: np.ndarray, v: np.ndarray, body_w: float, dome: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue density (thicker centrally, neck and sloping shoulders) and the body mask."""
    zu, zv = u / body_w, (v - 0.3) / 1.35
    body_f = zu * zu * zu * zu + zv * zv * zv * zv
    au = np.abs(u)
    top_line = -0.88 + 0.45 * np.clip(au - 0.2, 0.0, None) ** 2 - 0.3 * _smooth((0.26 - au) * 7)
    outline = _smooth((v - top_line) * 12) * _smooth((1.0 - body_f) * 4)
    inside = outline > 0.5
    dens = outline * (0.1 + 0.62 * np.sqrt(np.sqrt(np.clip(1.0 - body_f, 0.0, 1.0))))
    dens += 0.06 * np.clip((v - dome) / 0.3, 0, 1) * inside  # abdomen
    dens -= 0.08 * _smooth((0.028 - au) * 60) * _smooth((-0.3 - v) * 10)  # trachea
    vert = 0.5 + 0.5 * np.cos(v * (2 * np.pi / 0.105))
    dens += _smooth((0.075 - au) * 40) * (0.06 + 0.04 * vert * vert) * inside  # spine
    return dens, inside


def _bones(dens: np.ndarray, x: np.ndarray, v: np.ndarray, lung: _Lung, view: str, female: bool) -> None:
    """Posterior and anterior ribs, clavicle and breast shadow of one side, added in place."""
    cage = (x > 0.03) & (x < lung.lateral + 0.06) & (lung.field(x * 0.93, v) < 1.3)
    cage = cage * _smooth((lung.dome(x) + 0.06 - v) * 12)
    top = lung.vc - lung.b_top - 0.04
    span = lung.dome_edge + 0.1 - top
    p = np.clip((v - 0.8 * (x - 0.22) ** 2 - top) / span, 0.0, 1.0)
    phase = 9.0 * p * (1.3 - 0.3 * p)  # rib spacing widens downwards
    fr = phase - np.floor(phase)
    dens += 0.075 * np.sqrt(np.clip(1.0 - ((fr - 0.5) / 0.2) ** 2, 0.0, 1.0)) * cage
    ant = np.clip((v + 0.5 * (x - 0.9) - top) / span, 0, 1) * 7.0
    fa = ant - np.floor(ant)
    dens += 0.03 * np.clip(1.0 - ((fa - 0.5) / 0.18) ** 2, 0, 1) * cage * _smooth((x - 0.15) * 8)
    cl_v = -0.63 - 0.2 * x + 0.14 * x * x - (0.06 if view == "AP" else 0.0)
    clav = np.clip(1.0 - ((v - cl_v) / 0.03) ** 2, 0.0, 1.0) * _smooth((x - 0.04) * 30) * _smooth((0.78 - x) * 20)
    dens += 0.12 * np.sqrt(clav) * (dens > 0.05)
    if female:
        bz = ((x - 0.6 * lung.lateral) / (0.5 * lung.lateral)) ** 2 + ((v - 0.28) / 0.3) ** 2
        dens += 0.05 * _smooth((1.0 - bz) * 4) * _smooth((v - 0.1) * 5) * (dens > 0.05)


def generate_phantom(index: int, seed: int = 0, config: PhantomConfig | None = None) -> PhantomCase:
    """Generate case ``index`` of the phantom series ``seed``.

    Args:
        index: Case number (>= 0); ``index // images_per_patient`` is the patient.
        seed: Series seed (>= 0); the same ``(seed, index, config)`` gives identical output.
        config: Generator settings (default :class:`PhantomConfig`).
    """
    cfg = config or PhantomConfig()
    if index < 0 or seed < 0:
        raise XrayfmError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    n = cfg.size
    patient_no, followup = divmod(index, cfg.images_per_patient)
    pat = _draw_patient(seed, patient_no, cfg)
    rng = _rng(seed, 2, index)
    view = "AP" if rng.random() < cfg.ap_fraction else "PA"
    j = cfg.pose
    canvas = _Canvas(
        n,
        angle=math.radians(rng.uniform(-5, 5) * j),
        shift=(rng.uniform(-0.05, 0.05) * j, rng.uniform(-0.04, 0.06) * j),
        scale=1.0 + rng.uniform(-0.08, 0.05) * j,
    )
    breath = rng.uniform(-0.03, 0.03)
    black, white = rng.uniform(-0.06, 0.06) * cfg.exposure, 0.9 - rng.uniform(-0.08, 0.06) * cfg.exposure
    gamma = math.exp(rng.uniform(-0.22, 0.22) * cfg.exposure)
    blur_sigma = rng.uniform(0.5, 1.1) * cfg.blur * n / 256
    draw = _rng(seed, 3, index).random(len(FINDINGS))
    present = {f: bool(d < cfg.prevalence.get(f, 0.0)) for f, d in zip(FINDINGS, draw)}

    lungs = [
        _Lung(lg.side, lg.xc, lg.a, lg.vc + breath, lg.b_top + breath, lg.b_bot, lg.dome_edge + breath, lg.dome_height)
        for lg in pat.lungs
    ]
    ctr = (pat.ctr_enlarged if present["cardiomegaly"] else pat.ctr_normal) + (0.02 if view == "AP" else 0.0)
    heart = _make_heart(pat, ctr, lungs[1].dome_edge)
    u, v = canvas.u, canvas.v
    dens, inside = _body(u, v, pat.body_w, lungs[1].dome_edge)
    heart_mask = heart.field(u, v) < 1.0
    windows = [canvas.window(*((-lg.lateral - 0.15, -1.0, 0.02) if lg.side < 0 else (-0.02, -1.0, lg.lateral + 0.15)),
                             lg.dome_edge + 0.3)  # fmt: skip
               for lg in lungs]  # fmt: skip
    zeros = np.zeros_like(u)
    scene = _Scene(canvas, lungs, heart, windows, zeros, zeros.copy(), zeros.copy(), {"heart": heart_mask})
    _draw_lungs(scene, _rng(seed, 11, index))
    drawers = (("pneumothorax", _pneumothorax), ("effusion", _effusion), ("consolidation", _consolidation),
               ("nodule", _nodules))  # fmt: skip
    for k, (name, draw_finding) in enumerate(drawers):  # each finding has its own random stream
        if present[name]:
            present[name] = draw_finding(scene, _rng(seed, 20 + k, index))

    dens += 0.11 * scene.marks - 0.40 * scene.air + scene.extra * inside
    dens += 0.03 * heart_mask * (v < lungs[1].dome_edge - 0.05)
    for lung, sl in zip(lungs, windows):
        _bones(dens[sl], lung.local(u[sl]), v[sl], lung, view, pat.sex == "F")

    img = np.clip((dens - black) / (white - black), 0.0, 1.0) ** gamma
    img = _gaussian_blur(img.astype(np.float32), blur_sigma)
    if cfg.noise > 0:
        nrng = _rng(seed, 10, index)
        sigma = cfg.noise * nrng.uniform(0.008, 0.02)
        img = img + sigma * (0.4 + np.sqrt(img)) * nrng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)

    anatomy = {name: scene.masks[name] for name in ("right_lung", "left_lung", "lungs", "heart")}
    labels = np.asarray([float(present[f]) for f in FINDINGS], np.float32)
    return PhantomCase(
        index=index, seed=seed, id=f"phantom_{index:06d}", patient=patient_no, followup=followup, view=view,
        sex=pat.sex, age=pat.age + followup, image=img, labels=labels, anatomy=anatomy, lesions=scene.lesions,
        ctr=round(ctr, 4), pixel_spacing_mm=FIELD_OF_VIEW_MM / n,
    )  # fmt: skip


def __getattr__(name: str) -> Any:
    # ``from xrayfm.data.phantom import write_phantom_dataset`` works without an import cycle
    if name == "write_phantom_dataset":
        from xrayfm.data.phantom_io import write_phantom_dataset

        return write_phantom_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
