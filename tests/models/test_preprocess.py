"""The preprocessing record: one per model and export, one resolver, the same pixels everywhere."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import Preprocess, create_model, create_model_and_transforms, resolve_preprocess
from xrayfm.models.backbones.eva_x import EVA_X_MEAN, EVA_X_STD
from xrayfm.models.export import export_backbone
from xrayfm.models.task_checkpoint import load_task_model, save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))
LUNGS = TaskSpec("lungs", "segmentation", ("lung",))


def test_record_round_trips_and_rejects_nonsense() -> None:
    rec = Preprocess(96, interpolation="bicubic", crop_pct=0.875, mean=0.4, std=0.2)
    assert Preprocess.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(XrayfmError, match="interpolation"):
        Preprocess(96, interpolation="lanczos9")
    with pytest.raises(XrayfmError, match="crop_pct"):
        Preprocess(96, crop_pct=1.5)
    with pytest.raises(XrayfmError, match="std"):
        Preprocess(96, std=0)
    with pytest.raises(XrayfmError, match="unknown fields"):
        Preprocess.from_dict({**rec.to_dict(), "gamma": 2})


def test_timm_cfg_becomes_a_grey_record() -> None:
    rec = Preprocess.from_timm_cfg(timm.get_pretrained_cfg("resnet18.a1_in1k").to_dict())
    assert rec.interpolation == "bicubic" and rec.crop_pct == pytest.approx(0.95) and rec.input_size == 224
    assert rec.mean == pytest.approx((0.485 + 0.456 + 0.406) / 3)


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_dataset_view_and_serving_view_give_the_same_pixels(crop_pct: float, interpolation: str) -> None:
    rec = Preprocess(64, interpolation=interpolation, crop_pct=crop_pct)
    image = torch.rand(1, 90, 120)
    sample = rec.eval_transform()({"image": image, "meta": {}})
    assert sample["image"].shape == (1, 64, 64)
    assert torch.equal(sample["image"], rec.prepare(image[0])[0])


def test_centre_crop_moves_boxes_and_masks_and_maps_boxes_back() -> None:
    rec = Preprocess(64, crop_pct=0.5)  # shorter side to 128, centre 64 kept
    mask = torch.zeros(1, 100, 100, dtype=torch.uint8)
    mask[0, 40:60, 40:60] = 1  # centre square survives
    boxes = torch.tensor([[40.0, 40.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0]])  # the corner box is cut away
    out = rec.eval_transform()({"image": torch.rand(1, 100, 100), "mask": mask, "boxes": boxes,
                                "box_labels": torch.tensor([0, 1]), "meta": {}})  # fmt: skip
    assert out["mask"].shape == (1, 64, 64) and out["mask"].sum() > 0
    assert out["box_labels"].tolist() == [0]
    back = rec.boxes_to_original(out["boxes"], 100, 100)
    assert torch.allclose(back, boxes[:1], atol=1e-4)


def test_eva_x_tags_carry_the_release_preprocessing() -> None:
    mim = timm.get_pretrained_cfg("eva_x_small_patch16.mim_merged520k")
    ft = timm.get_pretrained_cfg("eva_x_small_patch16.ft_chestxray14")
    assert timm.get_pretrained_cfg("eva_x_small_patch16").tag == "mim_merged520k"  # the default tag
    assert mim.hf_hub_id == "MapleF/eva_x" and mim.hf_hub_filename == "eva_x_small_patch16_merged520k_mim.pt"
    assert ft.hf_hub_filename == "eva_x_small_patch16_merged520k_mim_cxr14_ft.pth" and ft.num_classes == 14
    assert ft.crop_pct == pytest.approx(224 / 256) and ft.interpolation == "bicubic"
    model = create_model("eva_x_tiny_patch16.ft_chestxray14", num_classes=0, img_size=64)
    rec = resolve_preprocess(model)
    assert (rec.input_size, rec.crop_pct, rec.mean, rec.std) == (64, pytest.approx(0.875), EVA_X_MEAN[0], EVA_X_STD[0])


def test_export_folder_brings_its_record_into_the_model(tmp_path) -> None:
    model = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64)
    record = Preprocess(64, interpolation="bilinear", mean=0.3, std=0.2)
    export_backbone(model, tmp_path, arch="eva_x_tiny_patch16", preprocess=record,
                    info={"model_kwargs": {"img_size": 64}})  # fmt: skip
    loaded = create_model("eva_x_tiny_patch16", pretrained=tmp_path, num_classes=0)
    assert resolve_preprocess(loaded) == record
    assert resolve_preprocess(loaded, img_size=96) == Preprocess(96, interpolation="bilinear", mean=0.3, std=0.2)
    backbone, transform = create_model_and_transforms(tmp_path, img_size=96, num_classes=0)
    assert backbone.patch_embed.img_size == (96, 96) and (transform.size, transform.interpolation) == (96, "bilinear")


def test_task_model_saves_and_restores_its_record(tmp_path) -> None:
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64)
    record = Preprocess(64, interpolation="bicubic", crop_pct=0.9, mean=0.45, std=0.27)
    model = XrayModel(backbone, [FINDINGS, LUNGS], preprocess=record)
    assert float(model.mean) == pytest.approx(0.45) and float(model.std) == pytest.approx(0.27)
    save_task_model(model, tmp_path, arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64}, info={})
    assert json.loads((tmp_path / "model.json").read_text())["preprocess"] == record.to_dict()
    loaded, meta = load_task_model(tmp_path)
    assert loaded.preprocess == record == resolve_preprocess(meta)
    same, transform = create_model_and_transforms(tmp_path)
    assert isinstance(same, XrayModel) and not same.training
    assert (transform.size, transform.interpolation, transform.crop_pct) == (64, "bicubic", 0.9)


def test_sidecars_from_before_the_record_still_resolve() -> None:
    legacy = {"arch": "eva_x_tiny_patch16", "img_size": 128, "normalization": {"mean": 0.4919, "std": 0.2851}}
    assert resolve_preprocess(legacy) == Preprocess(128, mean=0.4919, std=0.2851)
    with pytest.raises(XrayfmError, match="no preprocessing record"):
        resolve_preprocess({"arch": "x"})
