"""Seeds of a run, so that a seeded run repeats bit for bit and a resumed one replays exactly.

Three levels, each depending only on the run's seed and a position in the run, never on what ran
before:

- :func:`seed_everything`, first thing in a run (before the model, its heads or a data subset is
  built), so that initial weights and subsets follow from the seed;
- :func:`seed_sample` before each training sample is read (:class:`SeededSamples` reads at the
  ``(position, index)`` pairs :class:`PositionSampler` deals), so random augmentations depend on
  the sample's position in the run, not on the DataLoader workers or on where a run resumed;
- :func:`micro_batch_seed` before every forward pass (random masks, dropout, drop-path).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.seed import seed_everything as _seed_everything
from torch.utils.data import Dataset, Sampler


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``.

    Lightning's ``seed_everything``; commands call it before they build anything random.

    Args:
        seed: The run's seed, in ``[0, 2**32)``.
    """
    _seed_everything(seed, workers=False, verbose=False)


def micro_batch_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """Seed of the global RNG for one forward pass.

    The training loop re-seeds before every forward pass, so random masks, dropout and drop-path
    depend only on the run's seed and the position in the run, never on what ran before (a
    resumed run draws the same numbers as an uninterrupted one) and differ between ranks.

    Args:
        seed: The run's seed.
        step: Optimiser step.
        micro_batch: Index of the micro-batch within the step (gradient accumulation, < 64).
        rank: Global rank of the process (< 4096).

    Returns:
        A non-negative seed, distinct for every ``(seed, step, micro_batch, rank)``.
    """
    return ((seed * 1_000_003 + step) * 64 + micro_batch) * 4096 + rank


def seed_sample(seed: int, rank: int, position: int) -> None:
    """Seed Python's ``random``, NumPy and torch's CPU generator for reading one training sample.

    Args:
        seed: The run's seed.
        rank: Global rank of the process.
        position: Samples this rank read before this one in the run.
    """
    words = np.random.SeedSequence([seed, rank, position]).generate_state(4)
    wide = int(words[0]) << 32 | int(words[1])
    random.seed(wide)
    np.random.seed(words)
    torch.random.default_generator.manual_seed(wide)


class PositionSampler(Sampler[tuple[int, int]]):
    """Pairs ``(position, index)``: each index of ``sampler`` with its position in the run.

    Args:
        sampler: The data order (e.g. :class:`~xrayfm.train.sampler.StepSampler`).
        start: Position of its first index (samples this rank read before, on resume).
    """

    def __init__(self, sampler: Sampler[int], start: int = 0) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return enumerate(self.sampler, self.start)


class SeededSamples(Dataset):
    """``dataset`` read at ``(position, index)`` pairs, seeding the RNGs by position first (:func:`seed_sample`).

    Args:
        dataset: A map-style dataset.
        seed: The run's seed.
        rank: Global rank of the process.
    """

    def __init__(self, dataset: Dataset, *, seed: int, rank: int) -> None:
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        position, index = item
        seed_sample(self.seed, self.rank, position)
        return self.dataset[index]
