"""Dataset mean / std for normalisation."""

from __future__ import annotations

import pytest
import torch

from xrayfm.data.stats import intensity_stats
from xrayfm.errors import DatasetError


def test_pooled_mean_and_std_match_numpy_over_all_pixels() -> None:
    images = [torch.rand(1, 8, 8) * (i + 1) / 4 for i in range(4)]
    stats = intensity_stats([{"image": im} for im in images], max_images=-1)
    every = torch.cat([im.flatten() for im in images]).double()
    assert stats["mean"] == pytest.approx(float(every.mean()))
    assert stats["std"] == pytest.approx(float(every.std(unbiased=False)))
    assert stats["images"] == 4 and stats["pixels"] == 256


def test_subset_is_seeded() -> None:
    data = [{"image": torch.full((1, 2, 2), i / 100)} for i in range(100)]
    a = intensity_stats(data, max_images=10, seed=1)
    assert a == intensity_stats(data, max_images=10, seed=1)
    assert a != intensity_stats(data, max_images=10, seed=2)
    assert a["images"] == 10


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(DatasetError, match="empty"):
        intensity_stats([])
