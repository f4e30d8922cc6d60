"""Classification head: pooled backbone features -> dropout -> linear.

Pooling is the backbone's own (timm ``forward_head(pre_logits=True)``): mean of patch tokens
followed by ``fc_norm`` for EVA-X (as its fine-tuning does), global average pooling for CNNs.
The linear layer starts truncated-normal (std 0.02), bias 0, times ``init_scale``: EVA-X's
fine-tuning model scales its new head by ``init_scale=0.001`` (hustvl/EVA-X
classification/models/models_eva.py:478, 558-560), so training starts from near-zero logits.
"""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Linear classifier over pooled features.

    Args:
        in_features: Width of the pooled features (the backbone's ``num_features``).
        num_classes: Output logits.
        dropout: Dropout before the linear layer.
        init_scale: Factor on the initial weights and bias (EVA-X: 0.001; 1 = plain init).
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, init_scale: float = 1.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)
        with torch.no_grad():
            self.fc.weight.mul_(init_scale)
            self.fc.bias.mul_(init_scale)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes)."""
        return self.fc(self.dropout(pooled))
