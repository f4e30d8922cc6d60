"""Label-efficient subsets: seeded, stratified, patient-disjoint fractions of a training set.

Patients (``meta['patient_id']``, else the image id) are the unit: all of a patient's images
are in or out together. Each patient is put in a stratum — the rarest class positive in any of
their images (``negative`` / ``unlabelled`` otherwise) — and every stratum contributes
``round(fraction * patients)`` patients, at least one, so even a 1% subset holds each class.
Within a stratum patients are ordered by a seeded hash of their id, so the subset depends only
on (seed, fraction, the set of patients) — not on file order — and a smaller fraction is
contained in a larger one with the same seed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

from xrayfm.data.base import XrayDataset
from xrayfm.errors import XrayfmError


def _rank(seed: int, patient: str) -> str:
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def fraction_subset(dataset: XrayDataset, fraction: float, *, seed: int = 0) -> list[int]:
    """Indices (sorted) of the records in a ``fraction`` subset of ``dataset``.

    Raises:
        XrayfmError: ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise XrayfmError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(range(len(dataset)))
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(dataset.records):
        by_patient[str(rec.meta.get("patient_id") or rec.meta.get("id") or rec.image.stem)].append(i)
    labels = [r.labels for r in dataset.records]
    has_labels = any(lab is not None for lab in labels)
    prevalence = None
    if has_labels:
        stack = np.stack([lab if lab is not None else np.full_like(labels[0], np.nan) for lab in labels])
        prevalence = np.nansum(stack == 1, axis=0)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, idx in by_patient.items():
        key = "unlabelled"
        if prevalence is not None:
            pos = sorted({int(c) for i in idx if labels[i] is not None for c in np.flatnonzero(labels[i] == 1)})
            key = f"class{min(pos, key=lambda c: (prevalence[c], c))}" if pos else "negative"
        strata[key].append(patient)
    chosen: list[int] = []
    for patients in strata.values():
        patients.sort(key=lambda p: _rank(seed, p))
        take = max(1, round(fraction * len(patients)))
        for p in patients[:take]:
            chosen.extend(by_patient[p])
    return sorted(chosen)
