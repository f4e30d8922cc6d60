"""Images of a model's recorded dataset for precision work: calibration (train) and held-out splits.

A fine-tuned model's ``model.json`` provenance names its dataset adapter, root and options;
these helpers rebuild the splits from it through the model's evaluation preprocessing, so
calibration and checks see what the served model sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xrayfm.data.registry import build_dataset
from xrayfm.errors import DatasetError
from xrayfm.models.preprocess import Preprocess


def spread(ds: Any, limit: int) -> Any:
    """At most ``limit`` samples of ``ds``, evenly spread over it (not just its first files)."""
    if len(ds) <= limit:
        return ds
    return ds.subset(np.linspace(0, len(ds) - 1, limit).round().astype(int).tolist())


def first_split(name: str, root: str, splits: Sequence[str], preprocess: Preprocess, options: dict) -> tuple:
    """The first of ``splits`` that ``name`` at ``root`` has images in: (dataset, split), or (None, reason)."""
    reasons = []
    for split in splits:
        try:
            ds = build_dataset(name, root, split, transform=preprocess.eval_transform(), **options)
        except (DatasetError, OSError) as exc:
            reasons.append(f"{split}: {exc}")
            continue
        if len(ds):
            return ds, split
        reasons.append(f"{split}: no images")
    return None, "; ".join(reasons)


def training_images(meta: dict[str, Any], preprocess: Preprocess, *, limit: int) -> tuple[Any, str]:
    """Training images of the model (int8 calibration), or (None, why not)."""
    prov = meta.get("provenance") or {}
    name, root = prov.get("dataset"), prov.get("root")
    if not name or not root:
        return None, "the model records no training dataset"
    ds, split = first_split(name, root, ("train",), preprocess, prov.get("dataset_options") or {})
    return (None, f"its training images cannot be read ({split})") if ds is None else (spread(ds, limit), "")
