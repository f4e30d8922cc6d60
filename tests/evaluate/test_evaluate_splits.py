"""Evaluating several splits: thresholds chosen on val and used unchanged on test, recorded in the results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from xrayfm.evaluate.run import evaluate_splits, load_evaluation
from xrayfm.evaluate.thresholds import choose_thresholds
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.registry import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

TASK = TaskSpec("labels", "multilabel", ("a", "b"))


class Toy(Dataset):
    """Random 32 px images with two labels; ``name`` and ``split`` as the real adapters have them."""

    name = "toy"

    def __init__(self, split: str, n: int, seed: int) -> None:
        self.split = split
        g = torch.Generator().manual_seed(seed)
        self.items = [
            {"image": torch.rand(1, 32, 32, generator=g), "labels": torch.tensor([float(i % 2), float(i % 3 == 0)]),
             "meta": {"id": f"{split}{i}"}}
            for i in range(n)
        ]  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@pytest.fixture(scope="module")
def model() -> XrayModel:
    torch.manual_seed(0)
    return XrayModel(create_model("resnet18", num_classes=0), [TASK], preprocess=Preprocess(32, mean=0.5, std=0.25))


def test_thresholds_come_from_val_and_are_used_on_test(model: XrayModel, tmp_path: Path) -> None:
    val, test = Toy("val", 24, 1), Toy("test", 30, 2)
    results = evaluate_splits(model, {"val": val, "test": test}, tmp_path, threshold="youden", n_boot=10)
    tasks, val_pred, recorded = load_evaluation(tmp_path / "eval_val")
    expected = choose_thresholds(val_pred["labels"]["probs"], val_pred["labels"]["labels"], "youden").tolist()
    for split in ("val", "test"):
        assert results[split]["thresholds"]["rule"] == "youden" and results[split]["thresholds"]["split"] == "val"
        assert results[split]["tasks"]["labels"]["metrics"]["threshold"] == pytest.approx(expected)
    assert recorded.for_task(TASK) == pytest.approx(expected) and tasks == [TASK]
    _, test_pred, _ = load_evaluation(tmp_path / "eval_test")
    assert test_pred["ids"] == [f"test{i}" for i in range(30)]
    assert np.array_equal(test_pred["labels"]["labels"], np.stack([s["labels"].numpy() for s in test.items]))


def test_without_val_the_rule_falls_back_to_a_fixed_threshold_and_says_so(model: XrayModel, tmp_path: Path) -> None:
    test = Toy("test", 20, 3)
    result = evaluate_splits(model, {"test": test}, tmp_path, threshold="sens:0.9", n_boot=5)["test"]
    assert result["thresholds"]["rule"] == "0.5" and "no val split" in result["thresholds"]["notes"][0]
    result = evaluate_splits(model, {"test": test}, tmp_path / "b", threshold="sens:0.9", n_boot=5,
                             threshold_dataset=Toy("val", 20, 4))["test"]  # fmt: skip
    assert result["thresholds"]["split"] == "val" and not (tmp_path / "b" / "eval_val").exists()
