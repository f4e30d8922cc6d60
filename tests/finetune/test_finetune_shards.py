"""``xrayfm finetune shards OUT``: trains on the streamed train split with the manifest's tasks, evaluates the val
and test splits read by index (and ``xrayfm evaluate RUN shards OUT`` too), and refuses by name the options a
stream cannot honour."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.shard_format import ShardDataset
from xrayfm.data.shards import build_shards
from xrayfm.errors import XrayfmError
from xrayfm.finetune.shard_checks import streamed_tasks
from xrayfm.tasks import TaskSpec
from xrayfm.train import CHECKPOINT

TINY = ["--arch", "test_resnet", "--img-size", "32", "--batch-size", "4", "--steps", "2", "--warmup", "0",
        "--n-boot", "5", "--accelerator", "cpu", "--precision", "32-true"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = write_phantom_dataset(tmp_path_factory.mktemp("finetune_shards") / "phantom", n=40, seed=0, size=32)
    out = phantom.parent / "shards"
    build_shards([f"phantom:{phantom}"], out, size=32, resize="square", part_size=5, chunk_mb=0.002)
    return out


@pytest.fixture(scope="module")
def run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetune_shards_run") / "run"
    assert main(["finetune", "shards", str(shards), "--out", str(out), *TINY]) == 0
    return out


def test_finetune_streams_the_train_split_and_evaluates_val_and_test(shards: Path, run: Path) -> None:
    manifest = json.loads((shards / "manifest.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train_images"] == manifest["counts"]["train"]["total"] and summary["steps"] == 2
    assert torch.load(run / CHECKPOINT, weights_only=True)["loader"]["num_samples_yielded"] == 8  # read as a stream
    kinds = {t["name"]: t["kind"] for t in manifest["tasks"]}
    trained = {t["name"] for t in json.loads((run / "eval_test" / "metrics.json").read_text())["task_specs"]}
    assert trained == {n for n, k in kinds.items() if k != "detection"} and "detection" in kinds.values()
    for split in ("val", "test"):
        metrics = json.loads((run / f"eval_{split}" / "metrics.json").read_text())
        ids = [s["meta"]["id"] for s in ShardDataset(shards, split)]
        assert metrics["n"] == len(ids) == manifest["counts"][split]["total"]
        assert (metrics["dataset"], metrics["split"]) == ("shards", split)  # named in reports, as adapters are
        with np.load(run / f"eval_{split}" / "predictions.npz") as saved:
            assert saved["ids"].tolist() == ids  # every sample once, in the stored order
        assert summary["evaluations"][split]["n"] == len(ids) and (run / f"eval_{split}" / "report.html").is_file()
        assert set(metrics["tasks"]) == trained
        assert all(metrics["tasks"][name]["headline"] for name in trained)
    assert metrics["thresholds"]["split"] == "val"  # Youden thresholds chosen on the val shards


def test_evaluate_scores_a_run_on_a_shard_split(shards: Path, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = main(["evaluate", str(run), "shards", str(shards), "--split", "test", "--out", str(out), "--n-boot", "5"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == json.loads((shards / "manifest.json").read_text())["counts"]["test"]["total"]
    again = json.loads((run / "eval_test" / "metrics.json").read_text())  # same model, split and val thresholds
    assert metrics["tasks"]["labels"]["metrics"] == again["tasks"]["labels"]["metrics"]


def test_box_tasks_of_the_manifest_are_left_out_unless_named(caplog: pytest.LogCaptureFixture) -> None:
    labels, boxes = TaskSpec("labels", "multilabel", ("a",)), TaskSpec("boxes", "detection", ("a",))
    with caplog.at_level(logging.WARNING):
        assert streamed_tasks([labels, boxes], requested=False) == [labels]
    assert "not training box task 'boxes' by default" in caplog.text and "--task boxes" in caplog.text
    assert streamed_tasks([labels, boxes], requested=True) == [labels, boxes]
    with pytest.raises(XrayfmError, match="only tasks are box tasks; name them with --task"):
        streamed_tasks([boxes], requested=False)


@pytest.mark.slow  # ~30 s on 2 CPU cores: the box head
def test_a_named_box_task_trains_from_shards(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "boxes"
    args = ["--task", "boxes", "--eval-split", "test", "--threshold", "0.5", *TINY]
    assert main(["finetune", "shards", str(shards), "--out", str(out), *args]) == 0
    metrics = json.loads((out / "eval_test" / "metrics.json").read_text())
    assert [t["name"] for t in metrics["task_specs"]] == ["boxes"] and metrics["tasks"]["boxes"]["metrics"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--train-fraction", "0.5"], "--train-fraction 0.5 draws training patients"),
        (["--pos-weight", "auto"], "--pos-weight auto counts every training label"),
        (["--eval-split", "all"], "--eval-split all: shards have no 'all' split"),
        (["-o", "views=all"], "shards take no option views"),
    ],
)
def test_options_a_stream_cannot_honour_are_refused_by_name(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture, option: list[str], message: str
) -> None:
    out = tmp_path / "refused"
    assert main(["finetune", "shards", str(shards), "--out", str(out), *option, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / CHECKPOINT).exists()


def test_a_sweep_over_label_fractions_of_shards_is_refused_naming_fractions(
    shards: Path, tmp_path: Path, capsys
) -> None:
    engine = [a for a in TINY if a not in ("--arch", "test_resnet")]
    argv = ["sweep", "shards", str(shards), "--out", str(tmp_path / "sweep"), "--fractions", "0.1,1",
            "--backbone", "r=test_resnet", *engine]  # fmt: skip
    assert main(argv) == 2
    assert "--fractions: shards stream their train split" in capsys.readouterr().err
    assert not list((tmp_path / "sweep").glob("r_*"))  # no run started
