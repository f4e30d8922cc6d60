"""`xrayfm finetune` on the real X-ray samples in ../shared: every task, every mode.

The default suite runs each task once, each in another mode; the other six task x mode
combinations are slow tests. Runs are tiny (a few steps at 64 px): they prove the commands
work end to end on real files, the benchmark in bench/finetune_real.py measures quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run

TASKS = {  # folder, options, headline metric, evaluated split (the TBX11K sample has train and val only)
    "labels": ("kermany_pneumonia_test224", ["-o", "split_column="], "mean_auroc", "test"),
    "masks": ("jsrt_lungs", ["-o", "mask_columns=mask", "-o", "label_columns=()"], "mean_dice", "test"),
    "boxes": ("tbx11k_tb_boxes", ["-o", "boxes_complete=True", "--task", "boxes"], "map_50", "val"),
}
FAST = ["--img-size", "64", "--batch-size", "4", "--steps", "3", "--warmup", "1", "--n-boot", "10"]
DEFAULT = {("labels", "lora"), ("masks", "linear"), ("boxes", "full")}
CASES = [
    pytest.param(task, mode, marks=() if (task, mode) in DEFAULT else pytest.mark.slow)
    for task in TASKS
    for mode in ("full", "linear", "lora")
]


@pytest.mark.parametrize("task, mode", CASES)
def test_finetune_and_evaluate_on_real_xrays(shared_datasets: Path, tmp_path: Path, task: str, mode: str) -> None:
    folder, options, metric, split = TASKS[task]
    out = tmp_path / "run"
    splits = ["--eval-split", split] + (["--eval-split", "test"] if split != "test" else [])
    res = run("finetune", "csv", str(shared_datasets / folder), *options, "--mode", mode, "--out", str(out),
              *splits, "--accelerator", "cpu", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"fine-tuning ({mode}) finished" in res.stdout and metric in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    if split != "test":
        assert "not evaluating split test: it has no images" in res.stderr and "test" not in summary["evaluations"]
    headline = summary["evaluations"][split]["tasks"][task]["headline"][metric]
    assert 0.0 <= headline["low"] <= headline["value"] <= headline["high"] <= 1.0
    share = summary["parameters"]["trainable_percent"]
    assert share == 100.0 if mode == "full" else 0.0 < share < 100.0


def test_a_single_value_of_a_tuple_option_is_one_column(shared_datasets: Path) -> None:
    res = run("inspect", str(shared_datasets / "jsrt_lungs"), "-o", "mask_columns=mask", "--check", "2", "--json")
    assert res.returncode == 0, res.stderr
    tasks = {t["name"]: t for t in json.loads(res.stdout)["tasks"]}
    assert tasks["masks"]["classes"] == ["mask"]
    res = run("inspect", str(shared_datasets / "jsrt_lungs"), "-o", "boxes_complete=maybe", "--check", "0")
    assert res.returncode == 2
    assert res.stderr.strip() == "xrayfm: error: dataset 'csv': option boxes_complete='maybe' must be true or false"


def test_a_set_without_a_train_split_says_so(shared_datasets: Path, tmp_path: Path) -> None:
    """The Kermany sample is the official test split only: every row says split=test."""
    root = shared_datasets / "kermany_pneumonia_test224"
    empty = f"{root}: 0 of 624 images are in split 'train' (split column: test 624); to train on them, pass -o split_column="
    res = run("inspect", str(root), "--check", "0", "--strict")
    assert res.returncode == 1 and "problems: 1" in res.stdout and empty in res.stdout
    res = run("finetune", "csv", str(root), "--out", str(tmp_path / "run"), "--accelerator", "cpu", *FAST)
    assert res.returncode == 2 and empty in res.stderr and "no sample has labels" not in res.stderr
    res = run("inspect", str(root), "-o", "split_column=", "--check", "0", "--strict")
    assert res.returncode == 0, res.stdout
