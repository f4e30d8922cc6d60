"""Deterministic, patient-disjoint splits.

Each group (patient) is assigned by hashing ``seed:group_id``, so the assignment of a patient
never depends on which other patients are present, on row order, or on the Python version:
adding data never moves an existing patient between train and test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from xrayfm.errors import DatasetError, XrayfmError

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}


def _unit_hash(key: str) -> float:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group_id: str, *, seed: int = 0, fractions: Mapping[str, float] | None = None) -> str:
    """Return the split name for one group (e.g. a patient id).

    Args:
        group_id: Identifier shared by all images that must stay together.
        seed: Changes the whole assignment when changed.
        fractions: Split name -> fraction, summing to 1 (default 70/10/20 train/val/test).

    Raises:
        XrayfmError: Fractions are negative or do not sum to 1.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise XrayfmError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    u = _unit_hash(f"{seed}:{group_id}")
    acc = 0.0
    for name, frac in fractions.items():
        acc += frac
        if u < acc:
            return name
    return list(fractions)[-1]


def split_groups(group_ids: Iterable[str], *, seed: int = 0, fractions: Mapping[str, float] | None = None) -> list[str]:
    """Vectorised :func:`assign_split` over a sequence of group ids (one per image)."""
    cache: dict[str, str] = {}
    out = []
    for g in group_ids:
        g = str(g)
        if g not in cache:
            cache[g] = assign_split(g, seed=seed, fractions=fractions)
        out.append(cache[g])
    return out


def holdout_fractions(val_fraction: float, test_fraction: float = 0.0) -> dict[str, float]:
    """Fractions for :func:`assign_split` that hold out ``val`` (and ``test``) shares from train.

    ``test`` is left out when ``test_fraction`` is 0 (a dataset with an official test set).

    Raises:
        DatasetError: A share is negative or nothing is left for training.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0, sum < 1")
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction}
    if test_fraction:
        fractions["test"] = test_fraction
    return fractions
