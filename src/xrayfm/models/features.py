"""Multi-scale feature maps of any backbone, for dense (segmentation, detection) heads.

Every timm backbone (EVA-X, ViT, ResNet, Swin, ConvNeXt...) exposes ``forward_intermediates``;
:func:`features` calls it with sensible default layers. A plain ViT has one stride (16), so
:class:`FeaturePyramid` builds the 1/4, 1/8, 1/16, 1/32 pyramid by deconvolution and pooling,
either from the last block alone (``last``: EVA-X's segmentation, ``use_last_feat_only=True`` in
hustvl/EVA-X segmentation/config/__base__/models/upernet_eva_x_small.py:31, after ViTDet) or
from four blocks, one per level (``pyramid``: blocks 3, 5, 7, 11 of 12, xrayfm's own option, as
BEiT / EVA-02 segmentation tap them); a hierarchical backbone's stage outputs are used as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xrayfm.errors import XrayfmError


def is_plain_vit(model: nn.Module) -> bool:
    """True when all of the backbone's feature maps share one stride (ViT / EVA-X)."""
    info = getattr(model, "feature_info", None)
    if not info:
        return False
    return len({f["reduction"] for f in info}) == 1


def default_layers(model: nn.Module) -> list[int]:
    """Layers to tap: four blocks of a ViT ending at the last (BEiT / EVA-02 segmentation: 3, 5, 7, 11 of 12;
    7, 11, 15, 23 of 24), else every stage of a hierarchical backbone (strides 2 or 4 to 32)."""
    info = list(getattr(model, "feature_info", []))
    if not info:
        raise XrayfmError(f"{type(model).__name__} has no feature_info: it cannot feed segmentation or box heads")
    if is_plain_vit(model):
        depth = len(info)
        if depth < 4:
            return list(range(depth))
        return [round(depth * k) - 1 for k in (1 / 3, 1 / 2, 2 / 3)] + [depth - 1]
    return list(range(len(info)))


#: How a plain ViT feeds dense heads: ``last`` block only (EVA-X) or a four-block ``pyramid``.
FEATURE_MODES = ("last", "pyramid")


def dense_layers(model: nn.Module, mode: str = "last") -> list[int]:
    """Layers feeding dense heads: a plain ViT's last block (``last``) or four blocks
    (``pyramid``, :func:`default_layers`); every stage of a hierarchical backbone either way.

    Raises:
        XrayfmError: Unknown mode, or a backbone without ``feature_info``.
    """
    if mode not in FEATURE_MODES:
        raise XrayfmError(f"unknown feature mode {mode!r}; expected one of {FEATURE_MODES}")
    layers = default_layers(model)
    return layers[-1:] if mode == "last" and is_plain_vit(model) else layers


def features(model: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Feature maps (N, C, H, W) of ``model`` at ``layers`` (default :func:`default_layers`)."""
    indices = list(layers) if layers is not None else default_layers(model)
    return model.forward_intermediates(x, indices=indices, intermediates_only=True)


class FeaturePyramid(nn.Module):
    """Backbone -> final features plus a pyramid of maps at strides 4, 8, 16, 32.

    A plain ViT taps one block (its map feeds all four levels) or four (one per level).

    Args:
        backbone: A timm model.
        layers: Blocks / stages to tap (default :func:`default_layers`).

    Attributes:
        out_channels: Channels of each pyramid level.
        strides: Stride of each pyramid level.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.layers = list(layers) if layers is not None else default_layers(backbone)
        info = backbone.feature_info
        self.plain = is_plain_vit(backbone)
        if self.plain:
            if len(self.layers) not in (1, 4):
                raise XrayfmError(f"a ViT pyramid needs 1 layer (the last feature) or 4 layers, got {self.layers}")
            dim = info[self.layers[0]]["num_chs"]
            self.strides = [4, 8, 16, 32]
            self.adapters = nn.ModuleList([_resampler(dim, info[0]["reduction"], s) for s in self.strides])
            self.out_channels = [dim] * 4
        else:
            self.adapters = nn.ModuleList([nn.Identity() for _ in self.layers])
            self.out_channels = [info[i]["num_chs"] for i in self.layers]
            self.strides = [info[i]["reduction"] for i in self.layers]

    def forward(self, backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One backbone pass: (final features for pooling heads, pyramid maps)."""
        final, maps = backbone.forward_intermediates(x, indices=self.layers)
        if len(maps) < len(self.adapters):  # one ViT block feeds every level
            maps = maps * len(self.adapters)
        return final, [adapt(m) for adapt, m in zip(self.adapters, maps)]


def _resampler(dim: int, stride: int, target: int) -> nn.Module:
    """ViTDet-style map from a plain ViT's stride to ``target``: 2x deconvolutions up (GELU and
    BatchNorm between two), max pooling down, identity when equal. Patch 8, 16 and 32 work."""
    if stride & (stride - 1) or stride < 2:
        raise XrayfmError(f"dense heads need a ViT whose patch stride is a power of two (8, 16, 32), got {stride}")
    if target > stride:
        return nn.MaxPool2d(target // stride)
    layers: list[nn.Module] = []
    while stride > target:
        if layers:
            layers += [nn.BatchNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, 2, stride=2))
        stride //= 2
    return nn.Sequential(*layers) if len(layers) > 1 else (layers[0] if layers else nn.Identity())
