"""Box localization with Deformable DETR (Hugging Face transformers): a shared encoder, a decoder per dataset.

Foundation X localizes with one deformable transformer encoder shared by every localization dataset
and, per dataset, its own decoder and class / box heads (jlianglab/Foundation_X
``deformable_transformer_F6.py``: six deep-copied decoders over one encoder). transformers'
:class:`~transformers.models.deformable_detr.modeling_deformable_detr.DeformableDetrEncoder` and
``DeformableDetrDecoder`` are used as they are (their multi-scale deformable attention falls back
to pure PyTorch ``grid_sample`` when no custom kernel is installed, so this runs on CPU), with
transformers' Hungarian matcher and focal / L1 / GIoU losses (``DeformableDetrForObjectDetectionLoss``).
Only the wiring of ``DeformableDetrModel`` is redone here, because that class owns its own CNN
backbone and one decoder: :class:`DeformableEncoder` takes xrayfm's feature pyramid instead and
:class:`DeformableDetrHead` runs one decoder on the encoder's memory.

As Deformable DETR (and the reference), the encoder reads the pyramid's levels at strides 8, 16
and 32, each through a 1x1 conv + GroupNorm, plus a fourth level from a stride-2 3x3 conv on the
last map (1x1 on a small input; its GroupNorm then normalises groups of a single value, see
:class:`InputNorm`). Single-stage; one class and one box head shared by all decoder layers (the reference's
``dec_pred_*_embed_share``), auxiliary losses on every layer. With ``with_box_refine`` (DINO refines, and the
paper recipe turns it on) each decoder layer starts from the boxes of the layer before: the shared box head's
output moves the reference points layer by layer (transformers' decoder does it when given the box heads), and
each layer's boxes are its delta on the previous layer's boxes. DINO's two-stage query selection and
contrastive denoising are not built.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_convert
from transformers import DeformableDetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
    DeformableDetrMLPPredictionHead,
    DeformableDetrSinePositionEmbedding,
    inverse_sigmoid,
)

from xrayfm.errors import XrayfmError

#: Paper-scale settings (reference DINO config: d 256, 8 heads, 6 + 6 layers, FFN 2048, dropout 0,
#: 4 levels x 4 points; 300 queries as Deformable DETR). Any ``DeformableDetrConfig`` field can override them.
DETR_DEFAULTS: dict[str, Any] = {
    "d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
    "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "dropout": 0.0,
    "num_feature_levels": 4, "encoder_n_points": 4, "decoder_n_points": 4, "num_queries": 300,
    "auxiliary_loss": True, "two_stage": False, "with_box_refine": False,
}  # fmt: skip
GROUPS = 32  # GroupNorm groups of the input projections, as Deformable DETR


def detr_config(settings: Mapping[str, Any] | None = None, num_classes: int = 1) -> DeformableDetrConfig:
    """A ``DeformableDetrConfig`` from :data:`DETR_DEFAULTS` with ``settings`` over them.

    Raises:
        XrayfmError: An unknown setting, two-stage (not wired here), ``d_model`` not a multiple of 32
            (GroupNorm), or fewer than two feature levels.
    """
    merged = {**DETR_DEFAULTS, **(settings or {})}
    unknown = sorted(set(merged) - set(DeformableDetrConfig().to_dict()))
    if unknown:
        raise XrayfmError(f"unknown Deformable DETR settings {unknown}; use DeformableDetrConfig's field names")
    if merged["two_stage"]:
        raise XrayfmError("two_stage is not supported by xrayfm's Deformable DETR head (with_box_refine is)")
    if merged["d_model"] % GROUPS:
        raise XrayfmError(f"d_model must be a multiple of {GROUPS} (GroupNorm), got {merged['d_model']}")
    if merged["num_feature_levels"] < 2:
        raise XrayfmError(f"num_feature_levels must be at least 2, got {merged['num_feature_levels']}")
    return DeformableDetrConfig(**merged, num_labels=num_classes, disable_custom_kernels=True)


class InputNorm(nn.GroupNorm):
    """The input projections' GroupNorm, also on a map where a group holds one value.

    At a small input the coarsest levels are 1x1, and with ``d_model`` = :data:`GROUPS` each group is then a single
    value, which ``nn.GroupNorm`` refuses ("Expected more than 1 value per channel") whatever the mode. The formula
    itself is defined there (the value minus its own mean is 0, so the output is the bias), so the same computation
    runs without that check. Parameter names are ``nn.GroupNorm``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


@dataclass
class EncoderMemory:
    """The shared encoder's output and the geometry a decoder needs to attend to it.

    Attributes:
        hidden: Encoded tokens (N, L, d) of all levels, finest first.
        mask: Real tokens (N, L), all True (xrayfm batches are not padded).
        spatial_shapes: (levels, 2) heights and widths.
        spatial_shapes_list: The same as tuples.
        level_start_index: First token of each level (levels,).
        valid_ratios: (N, levels, 2), all 1.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    spatial_shapes: torch.Tensor
    spatial_shapes_list: list[tuple[int, int]]
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor

    def take(self, index: torch.Tensor) -> EncoderMemory:
        """The memory of the images at ``index`` only."""
        return EncoderMemory(self.hidden[index], self.mask[index], self.spatial_shapes, self.spatial_shapes_list,
                             self.level_start_index, self.valid_ratios[index])  # fmt: skip


class DeformableEncoder(nn.Module):
    """The shared part: input projections, sine position and level embeddings, the deformable encoder.

    Args:
        in_channels: Channels of the pyramid levels (strides 4-32); the last ``num_feature_levels - 1`` are used.
        config: From :func:`detr_config`.

    Raises:
        XrayfmError: The pyramid has fewer levels than the config taps.
    """

    def __init__(self, in_channels: Sequence[int], config: DeformableDetrConfig) -> None:
        super().__init__()
        d, taps = config.d_model, config.num_feature_levels - 1
        if taps > len(in_channels):
            raise XrayfmError(f"{config.num_feature_levels} feature levels need {taps} pyramid maps, got {in_channels}")
        self.config, self.taps = config, taps
        proj = [nn.Sequential(nn.Conv2d(c, d, 1), InputNorm(GROUPS, d)) for c in in_channels[-taps:]]
        proj.append(nn.Sequential(nn.Conv2d(in_channels[-1], d, 3, stride=2, padding=1), InputNorm(GROUPS, d)))
        self.input_proj = nn.ModuleList(proj)
        self.position_embedding = DeformableDetrSinePositionEmbedding(d // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d))
        self.encoder = DeformableDetrEncoder(config)
        for p in self.input_proj:  # Deformable DETR's initialisation
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.zeros_(p[0].bias)
        nn.init.normal_(self.level_embed)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> EncoderMemory:
        """Encode the pyramid's maps (N, C, h, w) at strides 8-32 plus one coarser level."""
        maps = list(pyramid[-self.taps :]) + [pyramid[-1]]
        sources = [proj(m) for proj, m in zip(self.input_proj, maps)]
        tokens, positions = [], []
        for level, src in enumerate(sources):
            pos = self.position_embedding(shape=src.shape, device=src.device, dtype=src.dtype)
            tokens.append(src.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        hidden = torch.cat(tokens, 1)
        shapes_list = [(s.shape[-2], s.shape[-1]) for s in sources]
        shapes = torch.as_tensor(shapes_list, dtype=torch.long, device=hidden.device)
        starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        ratios = hidden.new_ones(hidden.shape[0], len(sources), 2)
        out = self.encoder(
            inputs_embeds=hidden, attention_mask=mask, spatial_position_embeddings=torch.cat(positions, 1),
            spatial_shapes=shapes, spatial_shapes_list=shapes_list, level_start_index=starts, valid_ratios=ratios,
        )  # fmt: skip
        return EncoderMemory(out.last_hidden_state, mask, shapes, shapes_list, starts, ratios)


class DeformableDetrHead(nn.Module):
    """One dataset's decoder with its queries and class / box heads, on a shared :class:`DeformableEncoder`.

    Args:
        config: From :func:`detr_config` (the encoder's; ``num_labels`` is set to ``num_classes`` here).
        num_classes: Box classes of the task (sigmoid focal classification: no background class).
        detections_per_img: Most boxes returned per image (top-k over queries x classes, as transformers'
            ``post_process_object_detection``).
        score_thresh: Minimum score of a returned box.
    """

    def __init__(
        self,
        config: DeformableDetrConfig,
        num_classes: int,
        *,
        detections_per_img: int = 100,
        score_thresh: float = 0.0,
    ) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        config.num_labels = num_classes
        d = config.d_model
        self.config, self.num_classes = config, num_classes
        self.detections_per_img, self.score_thresh = detections_per_img, score_thresh
        self.query_position_embeddings = nn.Embedding(config.num_queries, 2 * d)
        self.reference_points = nn.Linear(d, 2)
        self.decoder = DeformableDetrDecoder(config)
        self.class_embed = nn.Linear(d, num_classes)
        self.bbox_embed = DeformableDetrMLPPredictionHead(d, d, 4, num_layers=3)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)  # Deformable DETR's initialisation
        nn.init.zeros_(self.reference_points.bias)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)
        if config.with_box_refine:  # the decoder refines with the shared box head; a plain list registers no copy
            object.__setattr__(self.decoder, "bbox_embed", [self.bbox_embed] * config.decoder_layers)

    def predict(self, memory: EncoderMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits (layers, N, Q, K) and normalised cxcywh boxes (layers, N, Q, 4) of every decoder layer."""
        n, d = memory.hidden.shape[0], self.config.d_model
        query_pos, target = self.query_position_embeddings.weight.split(d, dim=1)
        query_pos, target = query_pos.expand(n, -1, -1), target.expand(n, -1, -1)
        reference = self.reference_points(query_pos).sigmoid()
        out = self.decoder(
            inputs_embeds=target, object_queries_position_embeddings=query_pos, encoder_hidden_states=memory.hidden,
            encoder_attention_mask=memory.mask, reference_points=reference, spatial_shapes=memory.spatial_shapes,
            spatial_shapes_list=memory.spatial_shapes_list, level_start_index=memory.level_start_index,
            valid_ratios=memory.valid_ratios,
        )  # fmt: skip
        hidden = out.intermediate_hidden_states.transpose(0, 1)  # (layers, N, Q, d)
        delta = self.bbox_embed(hidden)
        # every layer's delta around the initial reference point (all layers without refinement, the first with it)
        boxes = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1)
        if self.config.with_box_refine:  # layer i > 0 moves the (detached) boxes the layer before refined to
            refined = out.intermediate_reference_points.transpose(0, 1)  # (layers, N, Q, 4)
            boxes = torch.cat([boxes[:1], delta[1:] + inverse_sigmoid(refined[:-1])])
        return self.class_embed(hidden), boxes.sigmoid()

    def forward(
        self,
        memory: EncoderMemory,
        image_size: tuple[int, int],
        targets: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training (with ``targets``, one per image: ``boxes`` xyxy pixels and 0-based ``labels``, or None for an
        image without a box annotation): ``{"loss_detr": total}``, transformers' weighted sum of focal, L1 and
        GIoU losses over every decoder layer and the annotated images. Otherwise: per image ``boxes`` (xyxy
        pixels), ``scores`` and 0-based ``labels``, as :class:`~xrayfm.models.heads.DetectionHead`."""
        h, w = image_size
        if targets is None:
            logits, boxes = self.predict(memory)
            return self.postprocess(logits[-1], boxes[-1], h, w)
        keep = [i for i, t in enumerate(targets) if t is not None]
        if not keep:  # nothing to learn from: a zero loss that still reaches every weight (DDP)
            zero = memory.hidden.sum() + sum(p.sum() for p in self.parameters())
            return {"loss_unannotated": zero * 0.0}
        if len(keep) < len(targets):
            memory = memory.take(torch.tensor(keep, device=memory.hidden.device))
        scale = memory.hidden.new_tensor([w, h, w, h])
        labels = [
            {
                "class_labels": targets[i]["labels"].long().reshape(-1).to(scale.device),
                "boxes": box_convert(targets[i]["boxes"].reshape(-1, 4).to(scale), "xyxy", "cxcywh") / scale,
            }
            for i in keep
        ]
        logits, boxes = self.predict(memory)
        loss, _, _ = DeformableDetrForObjectDetectionLoss(
            logits[-1], labels, scale.device, boxes[-1], self.config, logits, boxes
        )
        return {"loss_detr": loss}

    def postprocess(self, logits: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> list[dict[str, torch.Tensor]]:
        """Top-k (query, class) pairs per image by sigmoid score, boxes in xyxy pixels."""
        n, q, k = logits.shape
        scores, flat = logits.sigmoid().flatten(1).topk(min(self.detections_per_img, q * k), dim=1)
        queries, labels = flat // k, flat % k
        xyxy = box_convert(boxes, "cxcywh", "xyxy") * boxes.new_tensor([w, h, w, h])
        xyxy = torch.gather(xyxy, 1, queries.unsqueeze(-1).expand(-1, -1, 4))
        xyxy = torch.minimum(xyxy.clamp(min=0), boxes.new_tensor([w, h, w, h]))
        out = []
        for i in range(n):
            sel = scores[i] > self.score_thresh
            out.append({"boxes": xyxy[i][sel], "scores": scores[i][sel], "labels": labels[i][sel]})
        return out
