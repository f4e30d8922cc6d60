"""Seeds of the global RNG, so that masks, dropout and augmentations replay exactly on resume."""

from __future__ import annotations


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
