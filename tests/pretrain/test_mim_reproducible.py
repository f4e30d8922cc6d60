"""``--seed`` reproduces a MIM pretraining run: same seed, same weights and losses bit for bit; another seed, others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=8, seed=0, size=48)


def _pretrain(data: Path, out: Path, seed: int, workers: int = 0) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Run ``xrayfm pretrain mim``; the exported weights and the losses of metrics.csv."""
    status = main([
        "pretrain", "mim", "phantom", str(data), "--out", str(out), "--img-size", "32", "--steps", "2",
        "--batch-size", "4", "--warmup", "1", "--log-every", "1", "--accelerator", "cpu", "--precision", "32-true",
        "--seed", str(seed), "--workers", str(workers),
    ])  # fmt: skip
    assert status == 0
    losses = [row.split(",")[1] for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    return load_file(out / "export" / "backbone.safetensors"), losses


@pytest.fixture(scope="module")
def seed_3(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], list[str]]:
    return _pretrain(phantom, tmp_path_factory.mktemp("run"), seed=3)


def test_one_seed_gives_identical_weights_and_losses(phantom: Path, seed_3, tmp_path: Path) -> None:
    first, first_losses = seed_3
    again, again_losses = _pretrain(phantom, tmp_path, seed=3, workers=2)  # workers draw the same views
    assert first.keys() == again.keys() and len(first_losses) == 2
    assert [k for k in first if not torch.equal(first[k], again[k])] == []
    assert first_losses == again_losses


def test_another_seed_gives_other_weights_and_losses(phantom: Path, seed_3, tmp_path: Path) -> None:
    (first, first_losses), (other, other_losses) = seed_3, _pretrain(phantom, tmp_path, seed=4)
    assert [k for k in first if not torch.equal(first[k], other[k])], "another seed gave the same weights"
    assert other_losses != first_losses
