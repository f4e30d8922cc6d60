"""Resize keeps targets in register; datasets batch through a multi-worker DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from xrayfm import XrayfmError
from xrayfm.data import build_dataset, collate_samples
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.transforms import Compose, Resize


def _sample() -> dict:
    image = torch.zeros(1, 40, 80)
    image[:, 10:20, 40:60] = 1.0
    mask = torch.zeros(1, 40, 80, dtype=torch.uint8)
    mask[:, 10:20, 40:60] = 1
    mask[:, 0:4, 0:8] = 255
    return {
        "image": image,
        "mask": mask,
        "boxes": torch.tensor([[40.0, 10.0, 60.0, 20.0]]),
        "box_labels": torch.tensor([0]),
        "meta": {"id": "x"},
    }


def test_resize_moves_boxes_and_masks_with_the_image() -> None:
    out = Resize((20, 20))(_sample())
    assert out["image"].shape == (1, 20, 20) and out["mask"].shape == (1, 20, 20)
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 5.0, 15.0, 10.0]]))
    assert set(out["mask"].unique().tolist()) == {0, 1, 255}  # nearest keeps labels and ignore
    ys, xs = torch.nonzero(out["mask"][0] == 1, as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (10, 15, 5, 10)
    assert out["meta"]["resized_from"] == [80, 40]
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0


def test_resize_rejects_bad_size_and_composes() -> None:
    with pytest.raises(XrayfmError, match="positive"):
        Resize(0)
    out = Compose([Resize(30), Resize((10, 20))])(_sample())
    assert out["image"].shape == (1, 10, 20)


def test_multiworker_loader_batches_phantom_samples(tmp_path: Path) -> None:
    root = write_phantom_dataset(tmp_path / "ph", n=12, seed=1, size=96)
    ds = build_dataset("phantom", root, "all", transform=Resize(64))
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (4, 1, 64, 64) and b["labels"].shape == (4, 5) and b["mask"].shape == (4, 3, 64, 64)
    assert len(b["boxes"]) == 4 and all(x.shape[1] == 4 for x in b["boxes"])
    assert np.isfinite(b["image"].numpy()).all()


def test_real_mixed_size_images_batch_after_resize(shared_datasets: Path) -> None:
    ds = build_dataset(
        "csv",
        shared_datasets / "covid_v7labs_lungs",
        "all",
        label_columns=(),
        mask_columns=("mask",),
        mask_ignore_value=255,
        transform=Resize(128),
    )
    batch = collate_samples([ds[i] for i in range(0, 40, 5)])
    assert batch["image"].shape == (8, 1, 128, 128) and batch["mask"].shape == (8, 1, 128, 128)
    sizes = {tuple(m["resized_from"]) for m in batch["meta"] if "resized_from" in m}
    assert len(sizes) > 1  # the real set really mixes sizes
