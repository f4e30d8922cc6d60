"""Box localization head: Faster R-CNN (torchvision) on an FPN over the backbone's pyramid.

torchvision's region proposal network and RoI heads are used as they are; only their input
changes: the FPN is fed from :class:`~xrayfm.models.features.FeaturePyramid` (a ViT's blocks
resampled to strides 4-32, as ViTDet-style detectors do, or a CNN's stages), so every xrayfm
backbone gets a detector in the same backbone pass that feeds the other heads. Images arrive
already resized and normalised by :class:`~xrayfm.models.task_model.XrayModel`, so torchvision's
own resize / normalise transform is not used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

FPN_CHANNELS = 256
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))


class DetectionHead(nn.Module):
    """FPN + RPN + RoI heads predicting ``num_classes`` box classes (plus background).

    Args:
        in_channels: Channels of the pyramid levels (the last four are used, strides 4-32).
        num_classes: Box classes of the task (torchvision's background class is added).
        score_thresh: Minimum score of a returned box.
        detections_per_img: Most boxes returned per image.
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, *, score_thresh: float = 0.05, detections_per_img: int = 100
    ) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels[-4:]), FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
            pre_nms_top_n={"training": 2000, "testing": 1000}, post_nms_top_n={"training": 1000, "testing": 500},
            nms_thresh=0.7,
        )  # fmt: skip
        pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            pool, TwoMLPHead(FPN_CHANNELS * 7 * 7, 1024), FastRCNNPredictor(1024, num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=256, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=score_thresh, nms_thresh=0.5, detections_per_img=detections_per_img,
        )  # fmt: skip

    def forward(
        self,
        image: torch.Tensor,
        pyramid: list[torch.Tensor],
        targets: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training (with ``targets``, one per image: ``boxes`` xyxy pixels and 0-based ``labels``, or
        None for an image without a box annotation): the loss dict over the annotated images only.
        Otherwise: per image ``boxes``, ``scores`` and 0-based ``labels``."""
        shifted = None
        if targets is not None:
            keep = [i for i, t in enumerate(targets) if t is not None]
            if not keep:  # nothing to learn from: a zero loss that still reaches every weight (DDP)
                zero = sum(m.sum() for m in pyramid[-4:]) + sum(p.sum() for p in self.parameters())
                return {"loss_unannotated": zero * 0.0}
            if len(keep) < image.shape[0]:
                index = torch.tensor(keep, device=image.device)
                image, pyramid = image[index], [m[index] for m in pyramid]
            # torchvision's class 0 is the background
            shifted = [{"boxes": targets[i]["boxes"].float(), "labels": targets[i]["labels"].long() + 1} for i in keep]
        maps = OrderedDict((str(i), m) for i, m in enumerate(pyramid[-4:]))
        features = self.fpn(maps)
        h, w = image.shape[-2:]
        images = ImageList(image, [(h, w)] * image.shape[0])
        proposals, rpn_losses = self.rpn(images, features, shifted)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, shifted)
        if shifted is not None:
            return {**rpn_losses, **roi_losses}
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in detections]


def detection_targets(batch: dict[str, Any]) -> list[dict[str, torch.Tensor] | None]:
    """torchvision-style targets of a collated batch, one per image: None for an image without a
    box annotation (a Sample without ``boxes``); an empty (0, 4) ``boxes`` is an annotation (no lesion).

    Args:
        batch: A batch of :func:`~xrayfm.data.sample.collate_samples`.

    Returns:
        Per image ``boxes`` (K, 4) and ``labels`` (K,), or None.

    Raises:
        ValueError: An image has boxes but no box labels.
    """
    n = len(batch["image"])
    boxes, labels = batch.get("boxes") or [None] * n, batch.get("box_labels") or [None] * n
    targets: list[dict[str, torch.Tensor] | None] = []
    for b, lab in zip(boxes, labels):
        if b is not None and lab is None:
            raise ValueError("an image has boxes but no box_labels")
        targets.append(None if b is None else {"boxes": b.reshape(-1, 4), "labels": lab.reshape(-1)})
    return targets
