"""Core data pieces: task specs, splits, uncertainty policies, RLE, collation, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xrayfm import DatasetError, UnknownNameError, XrayfmError
from xrayfm.data import apply_uncertainty_policy, assign_split, build_dataset, collate_samples, split_groups
from xrayfm.data.masks import RleMask, decode_rle, read_label_map
from xrayfm.data.splits import holdout_fractions
from xrayfm.tasks import TaskSpec


def test_task_spec_validation_and_roundtrip() -> None:
    t = TaskSpec("findings", "multilabel", ("a", "b"))
    assert TaskSpec.from_dict(t.to_dict()) == t and t.sample_key == "labels"
    with pytest.raises(XrayfmError, match="unknown kind"):
        TaskSpec("x", "regression", ("a",))  # type: ignore[arg-type]
    with pytest.raises(XrayfmError, match="duplicate"):
        TaskSpec("x", "multiclass", ("a", "a"))


def test_split_is_deterministic_and_order_independent() -> None:
    ids = [f"p{i}" for i in range(2000)]
    a = split_groups(ids, seed=0)
    b = split_groups(list(reversed(ids)), seed=0)[::-1]
    assert a == b
    assert split_groups(ids, seed=1) != a
    frac = {s: a.count(s) / len(a) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.04 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.2) < 0.03
    assert assign_split("p7", seed=0) == a[7]
    with pytest.raises(XrayfmError, match="sum to 1"):
        assign_split("p", fractions={"train": 0.5})


def test_holdout_fractions() -> None:
    assert holdout_fractions(0.1) == {"train": 0.9, "val": 0.1}
    assert holdout_fractions(0.1, 0.2) == pytest.approx({"train": 0.7, "val": 0.1, "test": 0.2})
    for bad in ((-0.1, 0.0), (0.5, 0.5), (0.1, -0.2)):
        with pytest.raises(DatasetError, match="sum < 1"):
            holdout_fractions(*bad)


def test_uncertainty_policies() -> None:
    raw = np.array([1.0, 0.0, -1.0, np.nan])
    np.testing.assert_array_equal(apply_uncertainty_policy(raw, "ones"), [1, 0, 1, 0])
    np.testing.assert_array_equal(apply_uncertainty_policy(raw, "zeros"), [1, 0, 0, 0])
    out = apply_uncertainty_policy(raw, "ignore", blank="nan")
    assert out[0] == 1 and out[1] == 0 and np.isnan(out[2]) and np.isnan(out[3])
    np.testing.assert_array_equal(apply_uncertainty_policy(raw, "U-Ones"), [1, 0, 1, 0])
    with pytest.raises(UnknownNameError, match="uncertainty policy"):
        apply_uncertainty_policy(raw, "maybe")
    with pytest.raises(DatasetError, match="found"):
        apply_uncertainty_policy(np.array([2.0]), "ones")


def test_rle_relative_and_absolute() -> None:
    # 4x3 image (w=4, h=3), column-major numbering: pixel k -> (row k % 3, col k // 3)
    m = decode_rle("1 2 3 1", 4, 3, relative=True)  # pixels 1-2, then 3 after the end (6)
    expected = np.zeros(12, np.uint8)
    expected[[1, 2, 6]] = 1
    np.testing.assert_array_equal(m, expected.reshape(4, 3).T)
    np.testing.assert_array_equal(decode_rle("2 2 7 1", 4, 3, relative=False), m)
    assert decode_rle("-1", 4, 3).sum() == 0
    with pytest.raises(DatasetError, match="outside"):
        decode_rle("10 5", 4, 3)
    with pytest.raises(DatasetError, match="odd"):
        decode_rle("1 2 3", 4, 3)


def test_collate() -> None:
    def s(n: int) -> dict:
        return {
            "image": torch.zeros(1, 8, 8),
            "labels": torch.zeros(3),
            "boxes": torch.zeros(n, 4),
            "box_labels": torch.zeros(n, dtype=torch.int64),
            "meta": {"id": str(n)},
        }

    batch = collate_samples([s(1), s(3)])
    assert batch["image"].shape == (2, 1, 8, 8) and batch["labels"].shape == (2, 3)
    assert [b.shape[0] for b in batch["boxes"]] == [1, 3]
    bad = s(0)
    bad["image"] = torch.zeros(1, 4, 4)
    with pytest.raises(XrayfmError, match="differ in shape"):
        collate_samples([s(1), bad])


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean nih_cxr14"):
        build_dataset("nih_cxr41", tmp_path)
    with pytest.raises(UnknownNameError, match="unknown split"):
        build_dataset("csv", tmp_path, "training")
    with pytest.raises(DatasetError, match="not a directory"):
        build_dataset("csv", tmp_path / "missing")
    with pytest.raises(DatasetError, match="not found"):
        build_dataset("csv", tmp_path)


def test_rle_mask_unions_regions() -> None:
    m = RleMask(("1 2", "5 1"), 4, 3, relative=True)()
    assert m.shape == (1, 3, 4) and m.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(m[0], decode_rle("1 2", 4, 3) | decode_rle("5 1", 4, 3))


def test_palette_masks(tmp_path: Path) -> None:
    """Grey palettes are read as grey values; coloured palettes keep indices (VOC style)."""
    from PIL import Image

    idx = np.zeros((4, 4), np.uint8)
    idx[1:3, 1:3] = 1
    grey = Image.fromarray(idx, "P")
    grey.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 = white, index 1 = black
    grey.save(tmp_path / "g.gif")
    np.testing.assert_array_equal(read_label_map(tmp_path / "g.gif") > 0, idx == 0)
    colour = Image.fromarray(idx, "P")
    colour.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    colour.save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "c.png"), idx)
