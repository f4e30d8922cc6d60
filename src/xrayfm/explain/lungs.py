"""Lung masks for the energy-in-lungs check: from a mask file, a dataset's masks, or a segmentation model.

Lung channels are found by name: every mask class whose name contains ``lung`` (``lungs``, or
``left_lung`` + ``right_lung``, joined), unless one class is named explicitly, as a model trained on a
CSV whose mask column is called ``mask`` needs (or train it with ``-o mask_classes=lungs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.data.masks import read_label_map
from xrayfm.data.sample import MASK_IGNORE
from xrayfm.errors import XrayfmError
from xrayfm.explain.checks import energy_in_mask, lung_energy_summary, mask_fraction
from xrayfm.explain.heatmap import explain_batch
from xrayfm.models.task_checkpoint import load_task_model
from xrayfm.models.task_model import XrayModel


def lung_channels(classes: Sequence[str], name: str | None = None) -> list[int]:
    """Indices of the lung classes among mask ``classes``: ``name`` exactly, or every class containing "lung".

    Raises:
        XrayfmError: No such class.
    """
    found = [i for i, c in enumerate(classes) if (c == name if name else "lung" in c.lower())]
    if not found:
        what = f"class {name!r}" if name else "class named like 'lung'"
        raise XrayfmError(f"no lung mask: no {what} among the mask classes {list(classes)}; name one with --lung-class")
    return found


def read_lung_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A lung mask file as (inside, valid) boolean (H, W) arrays.

    Non-zero pixels are lung; 255 means "ignore" (xrayfm's convention), except in a mask whose only
    values are 0 and 255, where 255 is lung (masks saved as black and white images).

    Raises:
        ImageReadError: Missing, corrupt or oversized file.
    """
    raw = read_label_map(Path(path))
    if set(np.unique(raw).tolist()) <= {0, MASK_IGNORE}:
        return raw == MASK_IGNORE, np.ones(raw.shape, dtype=bool)
    return (raw != 0) & (raw != MASK_IGNORE), raw != MASK_IGNORE


class LungSegmenter:
    """Lung masks from an xrayfm fine-tuned model with a segmentation head (e.g. trained on JSRT).

    Args:
        path: The model's run or model folder.
        class_name: The lung class (default every mask class containing "lung").

    Raises:
        XrayfmError: No model there, no segmentation task, or no lung class in it.
    """

    def __init__(self, path: str | Path, class_name: str | None = None) -> None:
        self.model, _ = load_task_model(path)
        task = next((t for t in self.model.tasks if t.kind == "segmentation"), None)
        if task is None:
            raise XrayfmError(f"{path}: the model has no segmentation head to find the lungs with")
        self.task, self.channels = task.name, lung_channels(task.classes, class_name)
        self.source = f"segmentation model {path} ({task.name}: {', '.join(task.classes[i] for i in self.channels)})"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Boolean lung masks (N, H, W) of grey [0, 1] images (N, 1, H, W), in the images' own frame."""
        device = next(self.model.parameters()).device
        x = self.model.preprocess.prepare(images.float()).to(device)
        probs = self.model(x, tasks=[self.task])[self.task].sigmoid()[:, self.channels].amax(1).float().cpu()
        h, w = images.shape[-2:]
        return np.stack([self.model.preprocess.plane_to_original(p, h, w).numpy() >= 0.5 for p in probs])


def _dataset_lungs(sample: dict[str, Any], channels: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    if "mask" not in sample:
        return None
    mask = sample["mask"][channels].numpy()
    return (mask == 1).any(0), ~(mask == MASK_IGNORE).any(0)


def dataset_lung_energy(
    model: XrayModel,
    dataset: Any,
    *,
    method: str,
    task: str | None = None,
    segmenter: LungSegmenter | None = None,
    lung_class: str | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Energy in the lungs of each image's heatmap over a dataset (each image's top class explained).

    Args:
        model: The classifier.
        dataset: Samples already at the model's input (its eval transform), masks following.
        method: Heatmap method.
        task: Classification task explained (default the first).
        segmenter: Where lung masks come from; default the dataset's own lung masks.
        lung_class: The dataset's lung mask class (default every class containing "lung").

    Returns:
        :func:`~xrayfm.explain.checks.lung_energy_summary` plus ``mask_source`` and ``method``.

    Raises:
        XrayfmError: No segmenter and no lung mask task in the dataset, or no image with a lung mask.
    """
    if segmenter is None:
        mask_task = dataset.task_for("mask")
        if mask_task is None:
            raise XrayfmError("the dataset has no masks; give a lung segmentation model (--lungs) for energy in lungs")
        channels = lung_channels(mask_task.classes, lung_class)
        source = f"dataset masks ({mask_task.name}: {', '.join(mask_task.classes[i] for i in channels)})"
    else:
        source = segmenter.source
    shares, fractions = [], []

    def flush(images: list[torch.Tensor], masks: list[tuple[np.ndarray, np.ndarray]]) -> None:
        batch = torch.stack(images)
        if segmenter is not None:
            masks = [(inside, np.ones(inside.shape, dtype=bool)) for inside in segmenter(batch)]
        for heat, (inside, valid) in zip(explain_batch(model, batch, method=method, task=task).maps, masks):
            shares.append(energy_in_mask(heat, inside, valid=valid))
            fractions.append(mask_fraction(inside, valid=valid))

    images: list[torch.Tensor] = []
    masks: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(len(dataset)):
        sample = dataset[i]
        lungs = None if segmenter is not None else _dataset_lungs(sample, channels)
        if segmenter is None and lungs is None:
            continue
        images.append(sample["image"])
        if lungs is not None:
            masks.append(lungs)
        if len(images) == batch_size:
            flush(images, masks)
            images, masks = [], []
    if images:
        flush(images, masks)
    if not shares:
        raise XrayfmError("no image with a lung mask to measure the heatmap's energy in the lungs")
    return {**lung_energy_summary(shares, fractions), "mask_source": source, "method": method}
