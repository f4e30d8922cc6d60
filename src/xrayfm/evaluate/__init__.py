"""Evaluation: metrics (torchmetrics), bootstrap confidence intervals, thresholds chosen on validation
predictions, paired comparisons (paired bootstrap, DeLong), dataset evaluation runs."""

from xrayfm.evaluate.bootstrap import (
    bootstrap_ci,
    classification_cis,
    rank_auroc,
    segmentation_cis,
)
from xrayfm.evaluate.box_bootstrap import detection_cis
from xrayfm.evaluate.box_metrics import detection_metrics
from xrayfm.evaluate.metrics import (
    classification_metrics,
    overlap_per_image,
    roc_curves,
    segmentation_metrics,
)
from xrayfm.evaluate.paired import delong_classification, delong_test, paired_differences
from xrayfm.evaluate.thresholds import ThresholdChoice, ThresholdRule, choose_task_thresholds, choose_thresholds

__all__ = [
    "ThresholdChoice",
    "ThresholdRule",
    "bootstrap_ci",
    "choose_task_thresholds",
    "choose_thresholds",
    "classification_cis",
    "classification_metrics",
    "delong_classification",
    "delong_test",
    "detection_cis",
    "detection_metrics",
    "overlap_per_image",
    "paired_differences",
    "rank_auroc",
    "roc_curves",
    "segmentation_cis",
    "segmentation_metrics",
]
