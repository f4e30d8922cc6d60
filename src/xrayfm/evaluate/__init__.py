"""Evaluation: metrics (torchmetrics), bootstrap confidence intervals, dataset evaluation runs."""

from xrayfm.evaluate.bootstrap import (
    bootstrap_ci,
    classification_cis,
    detection_cis,
    rank_auroc,
    segmentation_cis,
)
from xrayfm.evaluate.metrics import (
    classification_metrics,
    detection_metrics,
    overlap_per_image,
    roc_curves,
    segmentation_metrics,
)

__all__ = [
    "bootstrap_ci",
    "classification_cis",
    "classification_metrics",
    "detection_cis",
    "detection_metrics",
    "overlap_per_image",
    "rank_auroc",
    "roc_curves",
    "segmentation_cis",
    "segmentation_metrics",
]
