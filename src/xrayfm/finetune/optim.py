"""Optimiser parameter groups for fine-tuning: layer-wise learning-rate decay (LLRD).

Backbone groups come from timm's ``param_groups_layer_decay`` (BEiT / EVA-X scheme: layer i of
L gets ``lr * decay ** (L - i)``, the patch embedding lowest, no weight decay on biases, norms,
position and token embeddings); heads train at the full rate. EVA-X uses decay 0.55 for
classification and 0.85 for segmentation.
"""

from __future__ import annotations

from typing import Any

from timm.optim import param_groups_layer_decay

from xrayfm.models.task_model import XrayModel


def finetune_param_groups(
    model: XrayModel, *, lr: float, weight_decay: float, layer_decay: float | None
) -> list[dict[str, Any]]:
    """AdamW groups with absolute ``lr`` per group (the scheduler scales them together).

    Args:
        model: The model (only trainable parameters are grouped).
        lr: Peak learning rate of the heads and the top backbone layer.
        weight_decay: Decay for weights; 0 for 1-D parameters and the backbone's no-decay list.
        layer_decay: LLRD factor; None or 1.0 = one rate for all.
    """
    backbone = model.backbone
    skip = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    groups: list[dict[str, Any]] = []
    if any(p.requires_grad for p in backbone.parameters()):
        for g in param_groups_layer_decay(
            backbone, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay or 1.0
        ):
            groups.append({"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * g["lr_scale"]})
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups.append({"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay, "lr": lr})
    groups.append({"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]
