"""`xrayfm finetune` evaluates every split asked for: only a split the dataset lacks is left out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm.cli import main

TINY = ["--arch", "resnet18", "--img-size", "32", "--batch-size", "4", "--steps", "1", "--warmup", "0",
        "--n-boot", "5", "--accelerator", "cpu"]  # fmt: skip


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    """Eight images with a split column; ``t2.png`` of the test split is named but absent."""
    root = tmp_path / "data"
    rows = [("r0", "train", 0), ("r1", "train", 1), ("r2", "train", 0), ("r3", "train", 1),
            ("v0", "val", 0), ("v1", "val", 1), ("t0", "test", 0), ("t1", "test", 1), ("t2", "test", 1)]  # fmt: skip
    for i, (name, _, _) in enumerate(rows[:-1]):
        _image(root / f"{name}.png", i)
    (root / "labels.csv").write_text("image,split,sick\n" + "".join(f"{n}.png,{s},{y}\n" for n, s, y in rows))
    return root


def test_missing_test_image_fails_the_run_in_one_line(csv_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["finetune", "csv", str(csv_root), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err  # progress lines, then the error
    lines = err.splitlines()
    assert "Traceback" not in err and [ln for ln in lines if ln.startswith("xrayfm:")] == lines[-1:]
    last = lines[-1]
    assert last.startswith("xrayfm: error: csv: 1 of 3 labelled images are missing") and "missing=skip" in last
    assert not (out / "summary.json").exists()  # no summary that evaluated val alone


def test_missing_skip_evaluates_the_images_present(csv_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["finetune", "csv", str(csv_root), "--out", str(out), "-o", "missing=skip", *TINY]) == 0
    evaluations = json.loads((out / "summary.json").read_text())["evaluations"]
    assert set(evaluations) == {"val", "test"}


def test_a_split_the_dataset_lacks_is_left_out_with_a_warning(tmp_path: Path, caplog) -> None:
    root = tmp_path / "covidx"
    lines = []
    for i in range(12):
        cls = ("normal", "pneumonia", "COVID-19")[i % 3]
        _image(root / "train" / f"im{i}.png", i)
        lines.append(f"p{i} im{i}.png {cls} src\n")
    (root / "train.txt").write_text("".join(lines))  # no test.txt: COVIDx without its test split
    out = tmp_path / "run"
    assert main(["finetune", "covidx", str(root), "--out", str(out), "--eval-split", "test", *TINY]) == 0
    assert "not evaluating split test: covidx: no test list" in caplog.text
    assert json.loads((out / "summary.json").read_text())["evaluations"] == {}
