"""A seed reproduces a fine-tuning run: same seed, same weights, loss and metrics bit for bit; another seed, others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.finetune.run import FinetuneConfig, run_finetune
from xrayfm.train import TrainConfig


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=16, seed=0, size=48)


def _finetune(data: Path, out: Path, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A short fine-tuning run (random init: the seed alone sets backbone, heads, subset and views)."""
    cfg = FinetuneConfig(
        dataset="phantom", root=str(data), tasks=["labels"], img_size=32, drop_path=0.1, dropout=0.1,
        train_fraction=0.75, allow_empty_classes=True, eval_splits=("test",), n_boot=5, threshold=0.5,
        train=TrainConfig(
            out_dir=str(out), steps=2, batch_size=4, lr=1e-3, warmup_steps=1, clip_grad=0.0, accelerator="cpu",
            precision="32-true", log_every=1, seed=seed,
        ),
    )  # fmt: skip
    summary = run_finetune(cfg)
    return load_file(out / "model" / "model.safetensors"), summary


def _metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The evaluations of a summary, the run folder in its paths written OUT."""
    out = summary["config"]["train"]["out_dir"]
    return json.loads(json.dumps(summary["evaluations"]).replace(out, "OUT"))


@pytest.fixture(scope="module")
def seed_5(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return _finetune(phantom, tmp_path_factory.mktemp("run"), seed=5)


def test_one_seed_gives_identical_weights_and_metrics(phantom: Path, seed_5, tmp_path: Path) -> None:
    (first, summary), (again, again_summary) = seed_5, _finetune(phantom, tmp_path, seed=5)
    assert first.keys() == again.keys() and any(k.startswith("heads.") for k in first)
    assert [k for k in first if not torch.equal(first[k], again[k])] == []
    assert summary["final_loss"] == again_summary["final_loss"]
    assert _metrics(summary) == _metrics(again_summary) and _metrics(summary)["test"]


def test_another_seed_gives_other_weights(phantom: Path, seed_5, tmp_path: Path) -> None:
    (first, summary), (other, other_summary) = seed_5, _finetune(phantom, tmp_path, seed=6)
    assert [k for k in first if not torch.equal(first[k], other[k])], "another seed gave the same weights"
    assert summary["final_loss"] != other_summary["final_loss"]
