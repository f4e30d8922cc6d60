"""Phantom findings: the scene they are drawn into and one function per finding.

The middle layer of the phantom generator: it builds on :mod:`~xrayfm.data.phantom_anatomy`
and is used by :mod:`~xrayfm.data.phantom`, which it does not import. Each ``draw_<finding>``
function draws its lesions (pixels, mask, box) into the scene from its own random stream and
returns whether any was placed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xrayfm.data.phantom_anatomy import (
    FIELD_OF_VIEW_MM,
    LUNG_NAMES,
    MASS_DIAMETER_MM,
    SIDES,
    Canvas,
    Heart,
    Lesion,
    Lung,
    mask_box,
    smoothstep,
    value_noise,
)


def _place(scene: Scene, rng: np.random.Generator, k: int, margin: float) -> tuple[float, float] | None:
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
class Scene:
    """The arrays a case is drawn into; per-lung work happens in that hemithorax's window.

    Attributes:
        canvas: The pixel grid and its canonical coordinates.
        lungs: The patient's right and left lung as posed in this image.
        heart: The heart as drawn in this image.
        windows: Per lung, the pixel slices covering its hemithorax.
        air: Lung air fraction (darkens), (H, W).
        marks: Vessel markings, (H, W).
        extra: Density added by findings, (H, W).
        masks: Named (H, W) bool masks: ``heart`` from the start; :func:`draw_lungs` adds
            ``right_lung``, ``left_lung`` and ``lungs``.
        lesions: The lesions drawn so far.
    """

    canvas: Canvas
    lungs: list[Lung]
    heart: Heart
    windows: list[tuple[slice, slice]]
    air: np.ndarray
    marks: np.ndarray
    extra: np.ndarray
    masks: dict[str, np.ndarray]
    lesions: list[Lesion] = field(default_factory=list)

    def side(self, k: int) -> tuple[tuple[slice, slice], Lung, np.ndarray, np.ndarray, np.ndarray]:
        """Window, lung, lung-local x, v and lung mask (windowed) of hemithorax ``k``."""
        sl, lung = self.windows[k], self.lungs[k]
        return sl, lung, lung.local(self.canvas.u[sl]), self.canvas.v[sl], self.masks[LUNG_NAMES[k]][sl]

    def add_lesion(self, label: str, mask: np.ndarray, sl: tuple[slice, slice], **attrs: Any) -> bool:
        """Record a lesion given its windowed mask; False (nothing recorded) when it is empty."""
        if not mask.any():
            return False
        full = np.zeros(self.air.shape, bool)
        full[sl] = mask
        self.lesions.append(Lesion(label, full, mask_box(full), attrs))
        return True


def draw_lungs(scene: Scene, rng: np.random.Generator) -> None:
    """Draw both lungs (air, vessel markings, hilum) and add their masks to ``scene.masks``.

    Args:
        scene: The scene, with the ``heart`` mask already set (it is cut out of the lungs).
        rng: Stream of the vessel markings.
    """
    heart_mask = scene.masks["heart"]
    for k in (0, 1):
        sl, lung = scene.windows[k], scene.lungs[k]
        x, v = lung.local(scene.canvas.u[sl]), scene.canvas.v[sl]
        f, dome, medial = lung.field(x, v), lung.dome(x), lung.medial(v)
        m = (f < 1.0) & (v < dome) & (x > medial) & ~heart_mask[sl]
        full = np.zeros(heart_mask.shape, bool)
        full[sl] = m
        scene.masks[LUNG_NAMES[k]] = full
        depth = smoothstep((1.0 - f) * 2.5) * smoothstep((dome - v) * 12) * smoothstep((x - medial) * 15)
        scene.air[sl] = np.maximum(scene.air[sl], np.where(m, 0.55 + 0.45 * depth, 0.0))
        marks = scene.marks[sl]
        xm, vm = x[m], v[m]
        marks[m] = _markings(rng, xm, vm) + 0.7 * np.exp(-((xm - 0.17) ** 2 + (vm + 0.03) ** 2) / 0.005)  # + hilum
    scene.masks["lungs"] = scene.masks["right_lung"] | scene.masks["left_lung"]


def draw_pneumothorax(scene: Scene, rng: np.random.Generator) -> bool:
    """Draw a dark rim without markings between the chest wall and a collapsed lung's pleural line.

    Args:
        scene: The scene, lungs drawn.
        rng: This finding's stream.

    Returns:
        Whether a lesion was placed.
    """
    k = int(rng.random() < 0.5)
    sl, lung, x, v, m = scene.side(k)
    s = rng.uniform(0.68, 0.88)
    cx, cv = lung.xc - 0.5 * lung.a, lung.dome_edge
    f_in = lung.field((x - cx) / s + cx, (v - cv) / s + cv)
    rim = m & (f_in >= 1.0)
    if not scene.add_lesion("pneumothorax", rim, sl, side=SIDES[k], collapse=round(1 - s, 3)):
        return False
    scene.air[sl][rim] = 1.05
    scene.marks[sl][rim] = 0.0
    scene.extra[sl] += 0.09 * (m & (np.abs(f_in - 1.0) < 0.09)) + 0.03 * (m & (f_in < 1.0))
    return True


def draw_effusion(scene: Scene, rng: np.random.Generator) -> bool:
    """Draw fluid at one or both lung bases, its meniscus climbing the lateral chest wall.

    Args:
        scene: The scene, lungs drawn.
        rng: This finding's stream.

    Returns:
        Whether a lesion was placed.
    """
    found = False
    for k in [0, 1] if rng.random() < 0.3 else [int(rng.random() < 0.5)]:
        sl, lung, x, v, m = scene.side(k)
        apex = lung.vc - lung.b_top
        level = lung.dome_edge - rng.uniform(0.18, 0.4) * (lung.dome_edge - apex)
        top = level - rng.uniform(0.12, 0.25) * np.clip((x - 0.1) / (lung.lateral - 0.1), 0, 1) ** 2.5
        fluid = m & (v > top)
        if scene.add_lesion("effusion", fluid, sl, side=SIDES[k]):
            found = True
            ramp = smoothstep((v - top) / 0.05)[fluid]
            scene.air[sl][fluid] *= 1.0 - 0.85 * ramp
            scene.marks[sl][fluid] *= 1.0 - ramp
    return found


def draw_consolidation(scene: Scene, rng: np.random.Generator) -> bool:
    """Draw a patchy bright region inside one lung.

    Args:
        scene: The scene, lungs drawn.
        rng: This finding's stream.

    Returns:
        Whether a lesion was placed (False when no free spot was found).
    """
    k = int(rng.random() < 0.5)
    rx, rv = rng.uniform(0.09, 0.17), rng.uniform(0.09, 0.17)
    c = _place(scene, rng, k, 0.5 * min(rx, rv))
    if c is None:
        return False
    cu, cv = c
    sl = scene.canvas.window(cu - rx, cv - rv, cu + rx, cv + rv)
    u, v = scene.canvas.u[sl], scene.canvas.v[sl]
    ell = ((u - cu) / rx) ** 2 + ((v - cv) / rv) ** 2
    patch = smoothstep((1.0 - ell) * 2.0 + 0.45 * value_noise(rng, u.shape, 5) - 0.3)
    lung_mask = scene.masks[LUNG_NAMES[k]][sl]
    if not scene.add_lesion("consolidation", lung_mask & (patch > 0.5), sl, side=SIDES[k]):
        return False
    scene.extra[sl] += 0.24 * patch * lung_mask
    return True


def draw_nodules(scene: Scene, rng: np.random.Generator) -> bool:
    """Draw one or two round bright blobs; a mass when the diameter exceeds 30 mm.

    Args:
        scene: The scene, lungs drawn.
        rng: This finding's stream.

    Returns:
        Whether any nodule was placed.
    """
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
        attrs = {"side": SIDES[k], "diameter_mm": diameter, "mass": diameter > MASS_DIAMETER_MM}
        if scene.add_lesion("nodule", mask, sl, **attrs):
            found = True
            scene.extra[sl] += rng.uniform(0.2, 0.3) * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    return found
