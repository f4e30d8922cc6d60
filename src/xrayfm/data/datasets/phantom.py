"""The phantom's native layout: synthetic chest radiographs written by ``xrayfm phantom``.

A thin adapter over the generic ``csv`` one with the phantom's columns fixed, so the label,
mask and box classes always come in the same order (see :mod:`xrayfm.data.phantom`).
"""

from __future__ import annotations

from pathlib import Path

from xrayfm.data.base import XrayDataset
from xrayfm.data.datasets.generic_csv import build_csv
from xrayfm.data.phantom import BOX_CLASSES, FINDINGS
from xrayfm.data.registry import register_dataset

MASK_COLUMNS: tuple[str, ...] = ("lungs_mask", "heart_mask", "lesions_mask")
MASK_CLASSES: tuple[str, ...] = ("lungs", "heart", "lesions")


@register_dataset(
    "phantom",
    description="Synthetic chest radiographs (xrayfm phantom): 5 findings, lung/heart/lesion masks, lesion boxes",
    layout="""
    ROOT/labels.csv   image,split,patient_id,view,sex,nodule,effusion,pneumothorax,cardiomegaly,
                      consolidation,lungs_mask,heart_mask,lesions_mask   (paths relative to ROOT)
    ROOT/boxes.csv    image,label,x_min,y_min,x_max,y_max   (every image box-annotated)
    ROOT/images/<id>.png|dcm   ROOT/masks/<id>_lungs.png, _heart.png, _lesions.png (0/1)
    Write one with: xrayfm phantom ROOT -n 200
    """,
    tasks=("multilabel", "segmentation", "detection"),
)
def build_phantom(root: Path, split: str, *, missing: str = "error") -> XrayDataset:
    """Build a phantom data set written in the native layout.

    Args:
        root: Folder written by :func:`xrayfm.data.phantom_io.write_phantom_dataset`.
        split: ``train``, ``val``, ``test`` (the ``split`` column, 70/10/20 by patient) or ``all``.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    return build_csv(
        root,
        split,
        label_columns=FINDINGS,
        mask_columns=MASK_COLUMNS,
        mask_classes=MASK_CLASSES,
        box_classes=BOX_CLASSES,
        boxes_complete=True,
        split_column="split",
        patient_column="patient_id",
        missing=missing,
        name="phantom",
    )
