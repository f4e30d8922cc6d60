"""`xrayfm explain --check` and the energy-in-lungs figure of `xrayfm localize`, on a phantom-trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = ("nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation")


def _save(model: XrayModel, out: Path) -> Path:
    return save_task_model(model, out, arch="resnet18", model_kwargs={}, info={"provenance": {"dataset": "phantom"}})


@pytest.fixture(scope="module")
def phantom_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(phantom folder, classifier, lung segmenter): resnet18 at 64 px; the classifier trained two steps
    on the phantom, the segmenter untrained (its masks only need to reach the check)."""
    root = tmp_path_factory.mktemp("checks")
    data = write_phantom_dataset(root / "ph", n=16, size=64)
    preprocess = Preprocess(64, mean=0.5, std=0.25)
    train = build_dataset("phantom", data, "train", transform=preprocess.eval_transform())
    batch = collate_samples([train[i] for i in range(len(train))])
    out = []
    for name, task, steps, loss_of in (  # the U-Net's backward is slow on CPU: the segmenter is only plumbing
        ("classifier", TaskSpec("labels", "multilabel", FINDINGS), 2, lambda y: y["labels"].nan_to_num(0.0)),
        ("lungs", TaskSpec("masks", "segmentation", ("lungs",)), 0, lambda y: y["mask"][:, :1].float()),
    ):
        torch.manual_seed(0)
        model = XrayModel(create_model("resnet18", num_classes=0), [task], preprocess=preprocess)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            target = loss_of(batch)
            logits = model(batch["image"][: len(target)])[task.name]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(_save(model.eval(), root / name))
    return data, out[0], out[1]


def _lung_file(data: Path) -> tuple[Path, Path]:
    image = sorted((data / "images").glob("*.png"))[0]
    return image, data / "masks" / f"{image.stem}_lungs.png"


def test_check_writes_both_figures_next_to_the_overlay(phantom_models, tmp_path: Path, capsys) -> None:
    data, classifier, _ = phantom_models
    image, mask_file = _lung_file(data)
    overlay = tmp_path / "gc.png"
    assert main(["explain", str(classifier), str(image), "--out", str(overlay), "--mask", str(mask_file)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "gc_check.json").read_text())
    lungs = report["energy_in_lungs"]
    assert lungs["lung_area"] == pytest.approx(float((np.asarray(Image.open(mask_file)) > 0).mean()))
    assert 0.0 <= lungs["energy_in_lungs"] <= 1.0 and lungs["mask_source"] == f"mask file {mask_file}"
    assert f"{lungs['energy_in_lungs']:.0%} of the heatmap's energy lies in the lungs" in printed
    stages = report["randomisation"]["stages"]
    assert [s["randomised"][-1] for s in stages] == ["heads.labels", "backbone.layer4", "backbone.layer3"]
    assert "randomisation test" in printed and overlay.is_file()


def test_check_with_a_segmentation_model_or_without_lungs(phantom_models, tmp_path: Path, capsys) -> None:
    data, classifier, segmenter = phantom_models
    image, _ = _lung_file(data)
    overlay = tmp_path / "seg.png"
    args = ["explain", str(classifier), str(image), "--out", str(overlay), "--random-blocks", "0"]
    assert main([*args, "--lungs", str(segmenter)]) == 0
    lungs = json.loads((tmp_path / "seg_check.json").read_text())["energy_in_lungs"]
    assert lungs["mask_source"].startswith("segmentation model") and "(masks: lungs)" in lungs["mask_source"]
    assert len(json.loads((tmp_path / "seg_check.json").read_text())["randomisation"]["stages"]) == 1  # the head only
    assert main([*args, "--check"]) == 0
    assert "not measured, no lung mask given" in capsys.readouterr().out
    assert "skipped" in json.loads((tmp_path / "seg_check.json").read_text())["energy_in_lungs"]
    assert main([*args, "--lungs", str(classifier)]) == 2
    assert "no segmentation head" in capsys.readouterr().err


def test_localize_reports_energy_in_lungs_on_the_phantom(phantom_models, tmp_path: Path, capsys) -> None:
    data, classifier, _ = phantom_models
    out = tmp_path / "loc.json"
    assert main(["localize", str(classifier), "phantom", str(data), "--split", "val", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lungs = json.loads(out.read_text())["energy_in_lungs"]
    test = build_dataset("phantom", data, "val")  # the split with lesion boxes (the test split has none)
    area = np.mean([float(test[i]["mask"][0].float().mean()) for i in range(len(test))])
    assert lungs["lung_area"] == pytest.approx(area, abs=0.02) and lungs["images"] == len(test)
    assert lungs["mask_source"] == "dataset masks (masks: lungs)" and "energy in lungs (gradcam" in printed
    assert "best threshold" in printed  # the box figures stay
    assert main(["localize", str(classifier), "phantom", str(data), "--out", str(out), "--lung-class", "liver"]) == 2
    assert "no class 'liver'" in capsys.readouterr().err
