"""Data order: seeded permutations per epoch, disjoint rank shards, resume at any sample."""

from __future__ import annotations

from itertools import islice

import pytest

from xrayfm.errors import XrayfmError
from xrayfm.train import StepSampler


def _take(sampler: StepSampler, n: int) -> list[int]:
    return list(islice(sampler, n))


def test_epochs_are_distinct_permutations() -> None:
    stream = _take(StepSampler(10, seed=1, rank=0, world=1), 30)
    assert all(sorted(stream[i : i + 10]) == list(range(10)) for i in (0, 10, 20))
    assert stream[:10] != stream[10:20]
    assert stream != _take(StepSampler(10, seed=2, rank=0, world=1), 30)


def test_resume_offset_continues_the_stream_mid_epoch() -> None:
    stream = _take(StepSampler(10, seed=1, rank=0, world=1), 25)
    assert _take(StepSampler(10, seed=1, rank=0, world=1, start=13), 12) == stream[13:]


def test_ranks_get_disjoint_equal_shards_and_resume_on_their_own() -> None:
    # 11 samples over 2 ranks: 5 each per epoch, the odd one left out
    streams = [_take(StepSampler(11, seed=3, rank=r, world=2), 15) for r in (0, 1)]
    for epoch in range(3):
        shards = [set(s[epoch * 5 : (epoch + 1) * 5]) for s in streams]
        assert len(shards[0]) == len(shards[1]) == 5 and not shards[0] & shards[1]
    for rank, stream in enumerate(streams):
        assert _take(StepSampler(11, seed=3, rank=rank, world=2, start=7), 8) == stream[7:]


def test_fewer_samples_than_processes_is_a_clear_error() -> None:
    with pytest.raises(XrayfmError, match="smaller than the 4 processes"):
        StepSampler(3, seed=0, rank=0, world=4)
