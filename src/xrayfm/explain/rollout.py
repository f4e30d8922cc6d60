"""Attention maps of ViTs: rollout (Abnar & Zuidema, 2020) and raw maps from a query point.

timm runs attention through PyTorch's fused ``scaled_dot_product_attention``, which never forms
the attention matrix. The probabilities are computed on demand: for one forward pass the
blocks are switched to timm's explicit path, whose softmax output passes through ``attn_drop``
(an identity in eval mode) where a hook records it; the switch is undone afterwards. The
numbers are therefore timm's own, RoPE included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xrayfm.errors import XrayfmError
from xrayfm.models.features import is_plain_vit
from xrayfm.models.task_model import XrayModel


def attention_maps(model: XrayModel, images: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities of every block, (N, heads, T, T) each, for grey [0, 1] images."""
    return attention_maps_and_logits(model, images)[0]


def attention_maps_and_logits(
    model: XrayModel, images: torch.Tensor, task: str | None = None
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """:func:`attention_maps` and, when ``task`` is named, that head's outputs from the same forward pass."""
    backbone = model.backbone
    if not is_plain_vit(backbone) or not hasattr(backbone, "blocks"):
        raise XrayfmError(f"attention maps need a ViT backbone, not {type(backbone).__name__}")
    if task is not None and task not in {t.name for t in model.tasks}:
        raise XrayfmError(f"no task {task!r}; the model has {sorted(t.name for t in model.tasks)}")
    attns = [blk.attn for blk in backbone.blocks]
    if not all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in attns):
        raise XrayfmError(f"{type(backbone).__name__}: its attention does not expose probabilities")
    captured: list[torch.Tensor] = []
    hooks = [a.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out.detach())) for a in attns]
    fused = [a.fused_attn for a in attns]
    was_training, leave_eval = model.training, any(m.training for m in model.modules())
    try:
        if leave_eval:
            model.eval()
        for a in attns:
            a.fused_attn = False
        with torch.no_grad():
            if task is None:
                model.backbone.forward_features(model.normalize(images))
                logits = None
            else:
                logits = model(images, tasks=[task])[task]
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in hooks:
            h.remove()
        if leave_eval:
            model.train(was_training)
    return captured, logits


def _to_grid(values: torch.Tensor, model: XrayModel, size: tuple[int, int]) -> torch.Tensor:
    h, w = model.backbone.patch_embed.dynamic_feat_size(size)
    grid = values.reshape(values.shape[0], 1, h, w)
    up = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    span = hi - lo
    flat = span <= 1e-5 * hi.abs()  # float noise only: nothing stands out, show nothing
    return torch.where(flat, torch.zeros_like(up), (up - lo) / span.clamp(min=1e-12))


def attention_rollout(
    model: XrayModel, images: torch.Tensor, *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Rollout maps (N, H, W) in [0, 1]: attention flowing to each patch through all blocks.

    Each block's heads are fused (``mean`` / ``max`` / ``min``), the weakest ``discard_ratio`` of
    links dropped, the identity added for the residual path and rows renormalised; the product
    over blocks is read from the class token (or averaged over tokens without one).
    """
    return rollout_of(attention_maps(model, images), model, tuple(images.shape[-2:]), head_fusion=head_fusion,
                      discard_ratio=discard_ratio)  # fmt: skip


def rollout_of(
    maps: list[torch.Tensor], model: XrayModel, size: tuple[int, int], *, head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """:func:`attention_rollout` of attention maps already recorded (:func:`attention_maps_and_logits`)
    for images of ``size`` (H, W)."""
    prefix = getattr(model.backbone, "num_prefix_tokens", 0)
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise XrayfmError(f"unknown head fusion {head_fusion!r}; choose mean, max or min")
    n, _, t, _ = maps[0].shape
    result = torch.eye(t).expand(n, t, t).clone()
    for a in maps:
        fused = fuse[head_fusion](a)
        if discard_ratio > 0:
            flat = fused.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                flat.scatter_(1, low, 0.0)
                fused = flat.view_as(fused)
        fused = fused + torch.eye(t)
        fused = fused / fused.sum(-1, keepdim=True)
        result = fused @ result
    flow = result[:, 0, prefix:] if prefix else result[:, :, :].mean(1)
    return _to_grid(flow, model, size)


def query_attention(
    model: XrayModel, images: torch.Tensor, point: tuple[float, float], *, block: int = -1
) -> torch.Tensor:
    """Raw attention (N, H, W) of the patch at ``point`` = (x, y) in [0, 1] image coordinates,
    averaged over the heads of one block (EVA-X's figure 8 style)."""
    return query_attention_of(attention_maps(model, images), model, tuple(images.shape[-2:]), point, block=block)


def query_attention_of(
    maps: list[torch.Tensor], model: XrayModel, size: tuple[int, int], point: tuple[float, float], *, block: int = -1
) -> torch.Tensor:
    """:func:`query_attention` of attention maps already recorded, for images of ``size`` (H, W)."""
    if not all(0 <= v <= 1 for v in point):
        raise XrayfmError(f"query point {point} must be (x, y) in [0, 1]")
    a = maps[block].mean(1)
    prefix = getattr(model.backbone, "num_prefix_tokens", 0)
    h, w = model.backbone.patch_embed.dynamic_feat_size(size)
    col, row = min(w - 1, int(point[0] * w)), min(h - 1, int(point[1] * h))
    return _to_grid(a[:, prefix + row * w + col, prefix:], model, size)
