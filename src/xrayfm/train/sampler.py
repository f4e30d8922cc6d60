"""The data order of a run: seeded, sharded by rank, and resumable at any sample."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from xrayfm.errors import XrayfmError


class StepSampler(Sampler[int]):
    """Endless seeded permutations, sharded by rank, starting at a given sample offset.

    Epoch ``e`` is a permutation of the dataset drawn from ``seed`` and ``e``; rank ``r`` of
    ``world`` takes every ``world``-th index from position ``r`` (the tail that does not divide
    evenly is dropped, so every rank sees the same number of samples). ``start`` counts samples of
    this rank already consumed, so a resumed run continues exactly where it stopped.

    Args:
        n: Dataset length.
        seed: Seed of the permutations.
        rank: This process's global rank.
        world: Number of processes.
        start: Samples of this rank to skip (optimiser steps done x accumulation x batch size).

    Raises:
        XrayfmError: The dataset has fewer samples than there are processes.
    """

    def __init__(self, n: int, *, seed: int, rank: int, world: int, start: int = 0) -> None:
        if n < world:
            raise XrayfmError(f"dataset of {n} samples is smaller than the {world} processes")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self) -> Iterator[int]:
        per_rank = self.n // self.world
        epoch, offset = divmod(self.start, per_rank)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank : per_rank * self.world : self.world]
            yield from order[offset:].tolist()
            epoch, offset = epoch + 1, 0
