"""Datasets: Sample convention, adapters for public X-ray datasets, phantom generator."""

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import DatasetInfo, build_dataset, get_dataset_info, list_datasets, register_dataset
from xrayfm.data.sample import MASK_IGNORE, Sample, collate_samples
from xrayfm.data.splits import assign_split, split_groups
from xrayfm.data.uncertainty import apply_uncertainty_policy

__all__ = [
    "MASK_IGNORE",
    "DatasetInfo",
    "Record",
    "Sample",
    "XrayDataset",
    "apply_uncertainty_policy",
    "assign_split",
    "build_dataset",
    "collate_samples",
    "get_dataset_info",
    "list_datasets",
    "register_dataset",
    "split_groups",
]
