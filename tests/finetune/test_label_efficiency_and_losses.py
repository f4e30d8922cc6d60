"""Label-efficient subsets (seeded, stratified, patient-disjoint, nested) and masked losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xrayfm.data.base import Record, XrayDataset
from xrayfm.errors import XrayfmError
from xrayfm.finetune.label_efficiency import fraction_subset
from xrayfm.finetune.losses import multiclass_loss, multilabel_loss, positive_weights, segmentation_loss
from xrayfm.tasks import TaskSpec

TASK = TaskSpec("findings", "multilabel", ("common", "rare"))


def dataset(n_patients: int = 200, per_patient: int = 2, order_seed: int | None = None) -> XrayDataset:
    rng = np.random.default_rng(0)
    records = []
    for p in range(n_patients):
        rare = p % 50 == 0  # 4 of 200 patients have the rare class
        for k in range(per_patient):
            labels = np.array([float(rng.random() < 0.3), float(rare)], dtype=np.float32)
            records.append(Record(Path(f"p{p}_{k}.png"), labels=labels, meta={"patient_id": f"P{p}", "id": f"{p}_{k}"}))
    if order_seed is not None:
        records = [records[i] for i in np.random.default_rng(order_seed).permutation(len(records))]
    return XrayDataset(records, [TASK], name="toy", root=Path("."), split="train")


def patients(ds: XrayDataset, idx: list[int]) -> set[str]:
    return {ds.records[i].meta["patient_id"] for i in idx}


def test_fraction_is_patient_disjoint_and_about_the_right_size() -> None:
    ds = dataset()
    idx = fraction_subset(ds, 0.1, seed=0)
    chosen = patients(ds, idx)
    # every image of a chosen patient is in, none of the others
    assert all((ds.records[i].meta["patient_id"] in chosen) == (i in set(idx)) for i in range(len(ds)))
    assert 18 <= len(chosen) <= 24


def test_one_percent_still_holds_the_rare_class() -> None:
    ds = dataset()
    idx = fraction_subset(ds, 0.01, seed=3)
    assert any(ds.records[i].labels[1] == 1 for i in idx)


def test_subsets_are_seeded_nested_and_independent_of_file_order() -> None:
    ds, shuffled = dataset(), dataset(order_seed=7)
    a = patients(ds, fraction_subset(ds, 0.1, seed=1))
    assert a == patients(shuffled, fraction_subset(shuffled, 0.1, seed=1))
    assert a == patients(ds, fraction_subset(ds, 0.1, seed=1))
    assert a != patients(ds, fraction_subset(ds, 0.1, seed=2))
    assert a <= patients(ds, fraction_subset(ds, 0.3, seed=1))
    assert fraction_subset(ds, 1.0) == list(range(len(ds)))


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_fraction_out_of_range(bad: float) -> None:
    with pytest.raises(XrayfmError, match="train fraction"):
        fraction_subset(dataset(10), bad)


def test_multilabel_loss_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert torch.allclose(multilabel_loss(logits, labels), expected)
    changed = logits.clone()
    changed[0, 1] = -50.0  # the unknown entry's logit does not matter
    assert torch.allclose(multilabel_loss(changed, labels), expected)
    assert multilabel_loss(logits, torch.full_like(labels, float("nan"))) == 0


def test_positive_weights_and_focal_loss() -> None:
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, float("nan")], [0.0, 0.0]])
    assert positive_weights(labels).tolist() == [3.0, 1.0]  # class 2 has no positives -> 1
    logits = torch.tensor([[4.0, -4.0], [-4.0, -4.0], [-4.0, 0.0], [-4.0, -4.0]])
    assert multilabel_loss(logits, labels, focal_gamma=2.0) < multilabel_loss(logits, labels)


def test_multiclass_loss_is_cross_entropy_over_known_rows() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [float("nan")] * 3])
    expected = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 2]))
    assert torch.allclose(multiclass_loss(logits, labels), expected)


def test_segmentation_loss_ignores_255_pixels() -> None:
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    mask[0, 0, :2] = 1
    logits = torch.where(mask.bool(), 8.0, -8.0).float()
    assert segmentation_loss(logits, mask) < 0.01
    mask_ignored = mask.clone()
    mask_ignored[0, 0, 3] = 255
    bad_logits = logits.clone()
    bad_logits[0, 0, 3] = 8.0  # wrong, but on ignored pixels
    assert torch.allclose(segmentation_loss(bad_logits, mask_ignored), segmentation_loss(logits, mask_ignored))
    assert segmentation_loss(bad_logits, mask) > 0.3
