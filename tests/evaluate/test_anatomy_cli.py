"""``xrayfm evaluate anatomy MODEL DATASET ROOT`` next to ``xrayfm evaluate MODEL DATASET ROOT``, on the phantom and
on real lung masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from xrayfm.cli import build_parser, main
from xrayfm.cli.anatomy import cmd_anatomy, merge_command_words
from xrayfm.cli.finetune import cmd_evaluate
from xrayfm.data.phantom_io import write_phantom_dataset

FAST = ["--img-size", "32", "--projection", "pca", "--random-patches", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), n=6, seed=0, size=96)


@pytest.mark.parametrize(
    ("argv", "func", "model"),
    [
        (["evaluate", "runs/ft", "phantom", "data"], cmd_evaluate, "runs/ft"),
        (["evaluate", "anatomy", "resnet50", "phantom", "data", "--pretrained", "none"], cmd_anatomy, "resnet50"),
        (["-v", "evaluate", "anatomy", "runs/pre", "phantom", "data"], cmd_anatomy, "runs/pre"),
        (["evaluate", "./anatomy", "phantom", "data"], cmd_evaluate, "./anatomy"),
    ],
)
def test_both_forms_of_evaluate_parse(argv: list[str], func: object, model: str) -> None:
    args = build_parser().parse_args(merge_command_words(argv))
    assert args.func is func and args.model == model and args.dataset == "phantom" and args.root == "data"


def test_only_the_command_words_are_merged() -> None:
    argv = ["finetune", "phantom", "evaluate", "anatomy"]
    assert merge_command_words(argv) == argv


def test_classic_evaluate_still_runs(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "missing"), "phantom", str(phantom)]) == 2
    assert "no fine-tuned model" in capsys.readouterr().err


def moco_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A MoCo-v2 checkpoint.pth of a random ResNet-18 as Adam's code writes it; returns the query encoder."""
    torch.manual_seed(1)
    query = torchvision.models.resnet18(num_classes=128)
    query.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), query.fc)
    q = query.state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in q.items()}
    state |= {f"module.encoder_k.{k}": v.clone() for k, v in q.items()}
    state |= {"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": state, "optimizer": {}, "best_loss": 5.0}, path)
    return q


def test_phantom_with_an_adam_checkpoint(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "checkpoint.pth"
    moco_checkpoint(ckpt)
    out = tmp_path / "eve"
    argv = ["evaluate", "anatomy", "resnet18", "phantom", str(phantom), "--split", "all", "--pretrained", str(ckpt)]
    assert main([*argv, "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "locality: nearest-neighbour landmark retrieval across patients" in printed and "heart apex" in printed
    result = json.loads((out / "anatomy.json").read_text())
    assert result["model"] == f"resnet18 ({ckpt})" and result["dataset"] == "phantom" and result["images"] == 6
    assert result["embedding_dim"] == 512 and result["locality"]["queries"] == 60  # 8 lung + 2 heart landmarks
    assert set(result["locality"]["per_landmark"]) >= {"right apex", "left hilum", "heart right border"}
    assert 0.0 <= result["locality"]["accuracy"] <= 1.0 and result["locality"]["chance"] == pytest.approx(5 / 50)
    for split in ("side_by_side_2", "stacked_3", "grid_2x2"):
        assert result["compositionality"][split]["n"] == 6 and -1 <= result["compositionality"][split]["median"] <= 1
    assert (out / "locality.png").stat().st_size > 0 and (out / "compositionality.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "resnet18: say which weights: --pretrained FILE|DIR, or --pretrained none"),
        (["--pretrained", "nowhere.pth"], "nowhere.pth: weight file not found"),
        (["--patch-fraction", "0"], "patch fraction must be in (0, 1]"),
    ],
)
def test_mistakes_are_one_line(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["evaluate", "anatomy", "resnet18", "phantom", str(phantom), "--out", str(tmp_path / "x"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_model_folder_takes_no_pretrained(phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "anatomy", str(tmp_path), "phantom", str(phantom), "--pretrained", "x.pth"]
    assert main(argv) == 2
    assert "is a model folder with its own weights" in capsys.readouterr().err


def test_real_lung_masks(shared_datasets: Path, tmp_path: Path) -> None:
    """JSRT's lung masks through the csv adapter: 8 images, 8 landmarks each, random init."""
    out = tmp_path / "eve"
    root = shared_datasets / "jsrt_lungs"
    argv = ["evaluate", "anatomy", "resnet18", "csv", str(root), "-o", "mask_columns=mask", "-o", "label_columns=()",
            "--pretrained", "none", "--max-images", "8", "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "anatomy.json").read_text())
    assert result["images"] == 8 and result["images_without_landmarks"] == 0 and result["split"] == "test"
    loc = result["locality"]
    assert loc["queries"] == 64 and loc["patients"] == 8 and loc["chance"] == pytest.approx(7 / 56)
    assert set(loc["per_landmark"]) == {f"{s} {n}" for s in ("right", "left")
                                        for n in ("apex", "costophrenic", "cardiophrenic", "hilum")}  # fmt: skip
