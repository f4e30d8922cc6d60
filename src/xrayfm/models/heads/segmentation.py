"""Segmentation heads on a feature pyramid, with segmentation-models-pytorch decoders.

A plain ViT (EVA-X) gets UperNet over the 1/4 to 1/32 pyramid of
:class:`~xrayfm.models.features.FeaturePyramid` (EVA-X: all four levels from the last block); a
hierarchical CNN gets a U-Net decoder over all its stages with the input as the
full-resolution skip. As mmseg's decode heads, dropout (``Dropout2d``, EVA-X 0.1) acts on the
decoder's output before the 1x1 classifier. Logits come out at the input's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead as SmpSegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from torch import nn

UNET_CHANNELS = (256, 128, 64, 32, 16)


class SegmentationHead(nn.Module):
    """Decoder + 1x1 classifier giving (N, num_classes, H, W) logits.

    Args:
        in_channels: Channels of the pyramid levels, finest first.
        strides: Their strides.
        num_classes: Mask channels.
        decoder: ``upernet`` or ``unet``.
        decoder_channels: UperNet width.
        input_channels: Channels of the image (the U-Net's full-resolution skip).
        dropout: ``Dropout2d`` rate before the classifier (mmseg ``dropout_ratio``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        decoder: str = "upernet",
        decoder_channels: int = 256,
        input_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        levels = len(in_channels)
        self.kind = decoder
        if decoder == "upernet":
            if levels < 4 or list(strides[-4:]) != [4, 8, 16, 32]:
                raise ValueError(f"UperNet needs pyramid levels at strides 4, 8, 16, 32; got {list(strides)}")
            # smp's decoder skips its first two inputs (strides 1 and 2)
            self.decoder = UPerNetDecoder([0, 0, *in_channels[-4:]], encoder_depth=5, decoder_channels=decoder_channels)
            self.classifier = SmpSegmentationHead(decoder_channels, num_classes, kernel_size=1)
        elif decoder == "unet":
            chans = UNET_CHANNELS[-levels:] if levels <= len(UNET_CHANNELS) else UNET_CHANNELS
            self.decoder = UnetDecoder([input_channels, *in_channels], chans, n_blocks=levels)
            self.classifier = SmpSegmentationHead(chans[-1], num_classes, kernel_size=3)
        else:
            raise ValueError(f"unknown decoder {decoder!r}; expected 'upernet' or 'unet'")

    def forward(self, image: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the image's size from the pyramid (finest first)."""
        if self.kind == "upernet":
            maps = pyramid[-4:]
            out = self.decoder([maps[0], maps[0], *maps])
        else:
            out = self.decoder([image, *pyramid])
        logits = self.classifier(self.dropout(out))
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits
