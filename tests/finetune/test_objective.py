"""The fine-tuning objective on batches where only some images carry a box annotation."""

from __future__ import annotations

import pytest
import torch

from xrayfm.data.sample import Sample, collate_samples
from xrayfm.errors import XrayfmError
from xrayfm.finetune.objective import FinetuneObjective
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))
LESIONS = TaskSpec("lesions", "detection", ("nodule", "mass"))


def objective(tasks=(LESIONS,)) -> FinetuneObjective:
    torch.manual_seed(0)
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, drop_path_rate=0.0)
    return FinetuneObjective(XrayModel(backbone, list(tasks))).train()


def sample(i: int, boxes: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Sample:
    s: Sample = {"image": torch.rand(1, 64, 64), "labels": torch.tensor([1.0, 0.0]), "meta": {"id": f"img{i}"}}
    if boxes is not None:
        s["boxes"], s["box_labels"] = boxes, labels if labels is not None else torch.zeros(len(boxes), dtype=torch.long)
    return s


def test_detection_loss_uses_only_the_box_annotated_images_of_a_mixed_batch() -> None:
    obj = objective((FINDINGS, LESIONS))
    batch = collate_samples(
        [
            sample(0, torch.tensor([[4.0, 4.0, 30.0, 40.0]]), torch.tensor([1])),
            sample(1),  # no box annotation: skipped by the detection head
            sample(2, torch.zeros(0, 4)),  # annotated, no lesion: a negative
            sample(3),
        ]
    )
    assert batch["boxes"][1] is None and batch["boxes"][2].shape == (0, 4)
    seen = []
    obj.model.heads["lesions"].rpn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].tensors.shape[0]))
    obj.model.pyramid.eval()  # its BatchNorm would otherwise mix the images through batch statistics
    images = batch["image"].requires_grad_(True)
    det = obj.model(images, {"lesions": [{"boxes": b, "labels": lab} if b is not None else None
                                         for b, lab in zip(batch["boxes"], batch["box_labels"])]})  # fmt: skip
    det_loss = torch.stack(list(det["lesions"].values())).sum()
    det_loss.backward()
    assert seen == [2] and torch.isfinite(det_loss)
    grad = images.grad.abs().flatten(1).sum(1)
    assert grad[0] > 0 and grad[2] > 0  # the annotated images (the empty one as a negative)
    assert grad[1] == 0 and grad[3] == 0  # the unannotated ones do not reach the detection loss

    seen.clear()
    loss = obj(batch)
    assert torch.isfinite(loss) and seen == [2]
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.model.heads["lesions"].parameters())


def test_a_batch_without_box_annotations_adds_no_detection_loss() -> None:
    obj = objective()
    batch = collate_samples([sample(0), sample(1)])
    assert "boxes" not in batch
    loss = obj(batch)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # every head weight is reached (a zero gradient), as DDP requires
    assert all(p.grad is not None and not p.grad.any() for p in obj.model.heads["lesions"].parameters())

    with_findings = objective((FINDINGS, LESIONS))
    torch.manual_seed(1)
    assert with_findings(batch).item() > 0  # the classification loss still counts


def test_boxes_without_box_labels_are_reported_with_the_image_ids() -> None:
    batch = collate_samples([sample(0, torch.zeros(0, 4)), sample(1)])
    batch["box_labels"][0] = None
    with pytest.raises(XrayfmError, match=r"task 'lesions', batch of images \['img0', 'img1'\]: .*no box_labels"):
        objective()(batch)


def test_evax_segmentation_loss_is_pixel_bce_without_dice_and_skips_ignored_pixels() -> None:
    lungs = TaskSpec("lungs", "segmentation", ("lungs",))
    torch.manual_seed(0)
    model = XrayModel(create_model("eva_x_tiny_patch16", num_classes=0, img_size=64), [lungs]).eval()
    mask = (torch.rand(2, 1, 64, 64) > 0.5).to(torch.uint8)
    mask[:, :, :8] = 255
    batch = {"image": torch.rand(2, 1, 64, 64), "mask": mask}
    with torch.no_grad():
        logits = model(batch["image"])["lungs"]
        bce = FinetuneObjective(model, seg_loss="bce").eval()(batch)
        both = FinetuneObjective(model).eval()(batch)
    keep = mask != 255
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], (mask[keep] == 1).float())
    assert torch.allclose(bce, expected, atol=1e-6) and both > bce  # the default adds soft Dice
    with pytest.raises(XrayfmError, match="unknown segmentation loss"):
        FinetuneObjective(model, seg_loss="dice")
