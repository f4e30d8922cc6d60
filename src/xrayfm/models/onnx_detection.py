"""Box detection through ONNX: the dense part in the graph, torchvision's box logic in PyTorch.

Faster R-CNN's cost is its dense part — backbone, feature pyramid, FPN and the RPN's
convolutions — which exports cleanly. What follows is data-dependent (anchor decoding, top-k,
proposal NMS, RoI align over a variable number of boxes, the small box MLP, score filtering and
final NMS), so it stays in PyTorch and runs torchvision's own code on the graph's outputs: the
boxes are those the PyTorch model gives, up to the graph's rounding. The graph gives, per
detection task, the five FPN levels, then the RPN objectness and box deltas of each level.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

from xrayfm.models.heads import DetectionHead

if TYPE_CHECKING:
    from xrayfm.models.onnx_model import OnnxModel
    from xrayfm.models.task_model import XrayModel

FPN_LEVELS = ("0", "1", "2", "3", "pool")


def part_names(task: str) -> list[str]:
    """Names of a detection task's graph outputs: FPN levels, RPN objectness, RPN deltas."""
    return (
        [f"{task}.fpn.{k}" for k in FPN_LEVELS]
        + [f"{task}.objectness.{k}" for k in FPN_LEVELS]
        + [f"{task}.deltas.{k}" for k in FPN_LEVELS]
    )


def dense_parts(head: DetectionHead, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
    """The exported part of ``head``: FPN levels, then RPN objectness and deltas per level."""
    features = head.fpn(OrderedDict((str(i), m) for i, m in enumerate(pyramid[-4:])))
    objectness, deltas = head.rpn.head(list(features.values()))
    return [*features.values(), *objectness, *deltas]


@torch.no_grad()
def detections_from_parts(
    head: DetectionHead, parts: list[torch.Tensor], image_size: tuple[int, int]
) -> list[dict[str, torch.Tensor]]:
    """Per-image ``boxes`` / ``scores`` / 0-based ``labels`` from :func:`dense_parts` outputs.

    This is torchvision's ``RegionProposalNetwork.forward`` after its head, then ``RoIHeads``, at inference.

    Args:
        head: The model's detection head (eval mode).
        parts: The 15 tensors of :func:`part_names`' order.
        image_size: (height, width) of the model input.
    """
    n = len(FPN_LEVELS)
    features = OrderedDict(zip(FPN_LEVELS, parts[:n]))
    objectness, deltas = parts[n : 2 * n], parts[2 * n :]
    batch = features["0"].shape[0]
    images = ImageList(features["0"].new_empty((batch, 0, *image_size)), [image_size] * batch)
    levels = list(features.values())
    rpn = head.rpn
    anchors = rpn.anchor_generator(images, levels)
    per_level = [o[0].numel() for o in objectness]
    scores, box_deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(box_deltas, anchors).view(batch, -1, 4)
    boxes, _ = rpn.filter_proposals(proposals, scores, images.image_sizes, per_level)
    detections, _ = head.roi_heads(features, boxes, images.image_sizes)
    return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in detections]


def onnx_task_outputs(
    onnx: OnnxModel, model: XrayModel, x: torch.Tensor, tasks: Sequence[str] | None = None
) -> dict[str, Any]:
    """What ``model(x)`` returns for the tasks in the export, computed by ONNX Runtime (detection
    finished in PyTorch by :func:`detections_from_parts`).

    Args:
        onnx: The loaded export.
        model: The PyTorch model it was exported from (its detection heads' box logic is used).
        x: Grey [0, 1] images (N, 1, S, S).
        tasks: The tasks wanted (default: every exported one); only their outputs are computed.
    """
    specs = [o for o in onnx.meta["outputs"] if tasks is None or o["name"] in tasks]
    raw = onnx(x, [n for o in specs for n in (part_names(o["name"]) if o["kind"] == "detection" else [o["name"]])])
    out: dict[str, Any] = {}
    for spec in specs:
        name = spec["name"]
        if spec["kind"] == "detection":
            parts = [raw[p] for p in part_names(name)]
            out[name] = detections_from_parts(model.heads[name], parts, tuple(x.shape[-2:]))
        else:
            out[name] = raw[name]
    return out
