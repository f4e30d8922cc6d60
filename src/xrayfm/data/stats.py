"""Dataset intensity statistics: the mean / std used to normalise inputs.

EVA-X's released fine-tuning normalises the [0, 1] grey image with mean 0.4919 / std 0.2851
(computed on its pretraining data); a user pretraining on other X-rays computes their own with
``xrayfm stats`` and passes them to ``pretrain mim --mean --std``. The pair is then recorded in
the exported checkpoint, so inference uses the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from xrayfm.errors import DatasetError
from xrayfm.progress import progress


def intensity_stats(dataset: Dataset, *, max_images: int = 2000, seed: int = 0) -> dict[str, float | int]:
    """Mean and standard deviation of pixel values over (a seeded sample of) a dataset.

    Pixels are pooled over images (float64 sums), after the dataset's transform (use a resize
    transform so every image weighs as its pixel count at the training size).

    Args:
        dataset: Yields Samples whose ``image`` is in [0, 1].
        max_images: Images to use; a seeded random subset when the dataset is larger (-1 = all).
        seed: Seed of the subset.

    Returns:
        ``mean``, ``std``, ``images`` used and ``pixels`` counted.

    Raises:
        DatasetError: The dataset is empty.
    """
    n = len(dataset)
    if n == 0:
        raise DatasetError("cannot compute statistics of an empty dataset")
    idx = np.arange(n)
    if 0 <= max_images < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))
    total, total_sq, count = 0.0, 0.0, 0
    for i in progress(idx.tolist(), desc="statistics", unit="img"):
        image = dataset[i]["image"].to(torch.float64)
        total += float(image.sum())
        total_sq += float((image * image).sum())
        count += image.numel()
    mean = total / count
    var = max(0.0, total_sq / count - mean * mean)
    return {"mean": mean, "std": float(np.sqrt(var)), "images": int(len(idx)), "pixels": int(count)}
