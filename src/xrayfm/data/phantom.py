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

The generator is split into layers that import one way only: :mod:`~xrayfm.data.phantom_anatomy`
(shapes, streams) <- :mod:`~xrayfm.data.phantom_findings` (the scene and one drawer per finding)
<- this module (pose, exposure, composition) <- :mod:`~xrayfm.data.phantom_io` (files on disk,
including :func:`~xrayfm.data.phantom_io.write_phantom_dataset`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xrayfm.data.phantom_anatomy import (
    FIELD_OF_VIEW_MM,
    Canvas,
    Lesion,
    Lung,
    draw_patient,
    gaussian_blur,
    make_heart,
    seeded_rng,
    smoothstep,
)
from xrayfm.data.phantom_findings import (
    Scene,
    draw_consolidation,
    draw_effusion,
    draw_lungs,
    draw_nodules,
    draw_pneumothorax,
)
from xrayfm.errors import XrayfmError

FINDINGS: tuple[str, ...] = ("nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation")
BOX_CLASSES: tuple[str, ...] = ("nodule", "effusion", "pneumothorax", "consolidation")
DEFAULT_PREVALENCE: dict[str, float] = {
    "nodule": 0.25, "effusion": 0.2, "pneumothorax": 0.15, "cardiomegaly": 0.2, "consolidation": 0.2,
}  # fmt: skip


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
            "meta": {
                "id": self.id,
                "source": "phantom",
                "patient_id": self.patient_id,
                "view": self.view,
                "sex": self.sex,
                "age": self.age,
                "size": [w, h],
            },  # fmt: skip
        }


# ----------------------------------------------------------------------------------- helpers


def _body(u: np.ndarray, v: np.ndarray, body_w: float, dome: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue density (thicker centrally, neck and sloping shoulders) and the body mask."""
    zu, zv = u / body_w, (v - 0.3) / 1.35
    body_f = zu * zu * zu * zu + zv * zv * zv * zv
    au = np.abs(u)
    top_line = -0.88 + 0.45 * np.clip(au - 0.2, 0.0, None) ** 2 - 0.3 * smoothstep((0.26 - au) * 7)
    outline = smoothstep((v - top_line) * 12) * smoothstep((1.0 - body_f) * 4)
    inside = outline > 0.5
    dens = outline * (0.1 + 0.62 * np.sqrt(np.sqrt(np.clip(1.0 - body_f, 0.0, 1.0))))
    dens += 0.06 * np.clip((v - dome) / 0.3, 0, 1) * inside  # abdomen
    dens -= 0.08 * smoothstep((0.028 - au) * 60) * smoothstep((-0.3 - v) * 10)  # trachea
    vert = 0.5 + 0.5 * np.cos(v * (2 * np.pi / 0.105))
    dens += smoothstep((0.075 - au) * 40) * (0.06 + 0.04 * vert * vert) * inside  # spine
    return dens, inside


def _bones(dens: np.ndarray, x: np.ndarray, v: np.ndarray, lung: Lung, view: str, female: bool) -> None:
    """Posterior and anterior ribs, clavicle and breast shadow of one side, added in place."""
    cage = (x > 0.03) & (x < lung.lateral + 0.06) & (lung.field(x * 0.93, v) < 1.3)
    cage = cage * smoothstep((lung.dome(x) + 0.06 - v) * 12)
    top = lung.vc - lung.b_top - 0.04
    span = lung.dome_edge + 0.1 - top
    p = np.clip((v - 0.8 * (x - 0.22) ** 2 - top) / span, 0.0, 1.0)
    phase = 9.0 * p * (1.3 - 0.3 * p)  # rib spacing widens downwards
    fr = phase - np.floor(phase)
    dens += 0.075 * np.sqrt(np.clip(1.0 - ((fr - 0.5) / 0.2) ** 2, 0.0, 1.0)) * cage
    ant = np.clip((v + 0.5 * (x - 0.9) - top) / span, 0, 1) * 7.0
    fa = ant - np.floor(ant)
    dens += 0.03 * np.clip(1.0 - ((fa - 0.5) / 0.18) ** 2, 0, 1) * cage * smoothstep((x - 0.15) * 8)
    cl_v = -0.63 - 0.2 * x + 0.14 * x * x - (0.06 if view == "AP" else 0.0)
    clav = np.clip(1.0 - ((v - cl_v) / 0.03) ** 2, 0.0, 1.0) * smoothstep((x - 0.04) * 30) * smoothstep((0.78 - x) * 20)
    dens += 0.12 * np.sqrt(clav) * (dens > 0.05)
    if female:
        bz = ((x - 0.6 * lung.lateral) / (0.5 * lung.lateral)) ** 2 + ((v - 0.28) / 0.3) ** 2
        dens += 0.05 * smoothstep((1.0 - bz) * 4) * smoothstep((v - 0.1) * 5) * (dens > 0.05)


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
    pat = draw_patient(seed, patient_no, cfg.female_fraction)
    rng = seeded_rng(seed, 2, index)
    view = "AP" if rng.random() < cfg.ap_fraction else "PA"
    j = cfg.pose
    canvas = Canvas(
        n,
        angle=math.radians(rng.uniform(-5, 5) * j),
        shift=(rng.uniform(-0.05, 0.05) * j, rng.uniform(-0.04, 0.06) * j),
        scale=1.0 + rng.uniform(-0.08, 0.05) * j,
    )
    breath = rng.uniform(-0.03, 0.03)
    black, white = rng.uniform(-0.06, 0.06) * cfg.exposure, 0.9 - rng.uniform(-0.08, 0.06) * cfg.exposure
    gamma = math.exp(rng.uniform(-0.22, 0.22) * cfg.exposure)
    blur_sigma = rng.uniform(0.5, 1.1) * cfg.blur * n / 256
    draw = seeded_rng(seed, 3, index).random(len(FINDINGS))
    present = {f: bool(d < cfg.prevalence.get(f, 0.0)) for f, d in zip(FINDINGS, draw)}

    lungs = [
        Lung(lg.side, lg.xc, lg.a, lg.vc + breath, lg.b_top + breath, lg.b_bot, lg.dome_edge + breath, lg.dome_height)
        for lg in pat.lungs
    ]
    ctr = (pat.ctr_enlarged if present["cardiomegaly"] else pat.ctr_normal) + (0.02 if view == "AP" else 0.0)
    heart = make_heart(pat, ctr, lungs[1].dome_edge)
    u, v = canvas.u, canvas.v
    dens, inside = _body(u, v, pat.body_w, lungs[1].dome_edge)
    heart_mask = heart.field(u, v) < 1.0
    windows = [canvas.window(*((-lg.lateral - 0.15, -1.0, 0.02) if lg.side < 0 else (-0.02, -1.0, lg.lateral + 0.15)),
                             lg.dome_edge + 0.3)  # fmt: skip
               for lg in lungs]  # fmt: skip
    zeros = np.zeros_like(u)
    scene = Scene(canvas, lungs, heart, windows, zeros, zeros.copy(), zeros.copy(), {"heart": heart_mask})
    draw_lungs(scene, seeded_rng(seed, 11, index))
    drawers = (("pneumothorax", draw_pneumothorax), ("effusion", draw_effusion),
               ("consolidation", draw_consolidation), ("nodule", draw_nodules))  # fmt: skip
    for k, (name, draw_finding) in enumerate(drawers):  # each finding has its own random stream
        if present[name]:
            present[name] = draw_finding(scene, seeded_rng(seed, 20 + k, index))

    dens += 0.11 * scene.marks - 0.40 * scene.air + scene.extra * inside
    dens += 0.03 * heart_mask * (v < lungs[1].dome_edge - 0.05)
    for lung, sl in zip(lungs, windows):
        _bones(dens[sl], lung.local(u[sl]), v[sl], lung, view, pat.sex == "F")

    img = np.clip((dens - black) / (white - black), 0.0, 1.0) ** gamma
    img = gaussian_blur(img.astype(np.float32), blur_sigma)
    if cfg.noise > 0:
        nrng = seeded_rng(seed, 10, index)
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
