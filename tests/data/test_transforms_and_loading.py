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


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _grey(h: int = 300, w: int = 260) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(1, h, w, generator=g), "labels": torch.tensor([1.0, 0.0]), "meta": {"id": "g"}}


def test_randaugment_view_is_evax_timm_pipeline_on_a_grey_image() -> None:
    from torchvision.transforms import InterpolationMode

    from xrayfm.data.transforms import RandAugmentView

    view = RandAugmentView(224, rand_augment="rand-m6-mstd0.5-inc1", scale=(0.08, 1.0), interpolation="bicubic")
    crop = view.views[0].transforms[0]
    assert crop.scale == (0.08, 1.0) and crop.interpolation == InterpolationMode.BICUBIC
    rand = view.views[1].transforms[0]
    assert rand.num_layers == 2 and all(op.magnitude == 6 and op.magnitude_std == 0.5 for op in rand.ops)
    _seed(3)
    a = view(_grey())
    _seed(3)
    b = view(_grey())
    assert a["image"].shape == (1, 224, 224) and a["image"].dtype == torch.float32
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    _seed(4)
    assert not torch.equal(view(_grey())["image"], a["image"])
    assert set(view(_sample())) == {"image", "meta"}  # classification only: masks and boxes left out
    with pytest.raises(XrayfmError, match="RandAugment string"):
        RandAugmentView(224, rand_augment="v0")


def test_photometric_view_flips_masks_with_the_image_and_keeps_contrast_in_range() -> None:
    from xrayfm.data.transforms import PhotometricView

    sample = {k: v for k, v in _sample().items() if k not in ("boxes", "box_labels")}
    flipped = PhotometricView(32, flip=1.0, brightness=0.0, contrast=(1.0, 1.0))(sample)
    straight = PhotometricView(32, flip=0.0, brightness=0.0, contrast=(1.0, 1.0))(sample)
    assert flipped["image"].shape == (1, 32, 32) and flipped["mask"].shape == (1, 32, 32)
    assert torch.equal(flipped["mask"], straight["mask"].flip(-1))
    assert torch.allclose(flipped["image"], straight["image"].flip(-1))
    _seed(0)
    outs = [PhotometricView(32, flip=0.0)(sample)["image"] for _ in range(20)]
    assert any(not torch.allclose(o, straight["image"]) for o in outs)  # brightness / contrast act half the time
    assert all(0.0 <= o.min() and o.max() <= 1.0 for o in outs)
    boxed = PhotometricView(40, flip=1.0, brightness=0.0, contrast=(1.0, 1.0))(_sample())
    assert boxed["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]]  # x 40-60 of 80 -> 20-30 of 40, mirrored
    assert boxed["mask"][0, 10:20, 10:20].eq(1).all() and boxed["mask"][0, 10:20, 20:30].eq(0).all()
