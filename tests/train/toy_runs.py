"""Pieces the engine's resume and validation tests share: a stand-in for a kill, and noisy toy data."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset


class Crash(RuntimeError):
    """Stands for the process being killed mid-run."""


class NoisyPairs(Dataset):
    """Regression pairs whose inputs get random noise from torch, NumPy and ``random``, as augmentations do."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.1 * torch.randn(4) + float(np.random.normal()) * 0.01 + random.random() * 0.01
        return self.x[i] + noise, self.y[i]
