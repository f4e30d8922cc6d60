"""The paper recipes hold the official values, each line cites its source, and each parses to them.

The pins below were read by hand from hustvl/EVA-X (classification/train_files/eva_x/*/*.sh,
classification/train.py, classification/utils/*.py, classification/models/models_eva.py,
segmentation/config/**, README.md) and the EVA-X paper; a recipe edit that changes a value or
drops its citation fails here. Recipes that hold ``global_batch`` need the engine's
``--global-batch`` option.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import xrayfm
from xrayfm.cli import build_parser
from xrayfm.cli.finetune import finetune_config
from xrayfm.cli.recipes import list_recipes, parse_with_recipe

RECIPES = Path(xrayfm.__file__).parent / "configs"
CLS = "classification/train_files/eva_x/cxr14/"
CHX = "classification/train_files/eva_x/chexpert/vit_s.sh"
MODEL = "segmentation/config/__base__/models/upernet_eva_x_small.py"

#: Values every EVA-X ChestX-ray14 run shares: key -> (value as parsed, citation in the line's comment).
_CXR14 = {
    "task": (["findings"], ":27 --nb_classes 14"),
    "img_size": (224, "classification/train.py:42"),
    "mode": ("full", "classification/train.py:383"),
    "optimizer": ("adamw", "classification/train.py:429-430"),
    "betas": ("0.9,0.999", "classification/train.py:430"),
    "lr": (1e-3, "train.py:411 lr = blr"),
    "weight_decay": (0.05, ":17 --weight_decay 0.05"),
    "layer_decay": (0.55, ":17 --layer_decay 0.55"),
    "schedule": ("constant", ":18 --fixed_lr"),
    "warmup_epochs": (5.0, ":20 --warmup_epochs 5"),
    "clip_grad": (0.0, "classification/train.py:52"),
    "drop_path": (0.2, ":21 --drop_path 0.2"),
    "dropout": (0.0, ":21 --vit_dropout_rate 0"),
    "head_init_scale": (0.001, "models_eva.py:478 init_scale=0.001"),
    "focal_gamma": (0.0, "classification/train.py:440 BCEWithLogitsLoss"),
    "augment": ("randaugment", ":29 --build_timm_transform"),
    "rand_augment": ("rand-m6-mstd0.5-inc1", ":30 --aa 'rand-m6-mstd0.5-inc1'"),
    "crop_scale": ("0.08,1", "classification/utils/datasets.py:69-80"),
    "flip": (0.5, "classification/utils/datasets.py:69-80"),
    "interpolation": ("bicubic", "classification/utils/datasets.py:74"),
    "crop_pct": (0.875, "classification/utils/datasets.py:88-96"),
    "seed": (0, "classification/train.py:125"),
    "batch_size": (None, "xrayfm:"),  # a machine's micro-batch, xrayfm's choice (value pinned per size)
}


def _cxr14(sh: str, arch: str, epochs: float, batch: int, micro: int) -> dict[str, tuple[Any, str]]:
    out = {k: (v, c if not c.startswith(":") else f"{sh}{c}") for k, (v, c) in _CXR14.items()}
    out["arch"] = (arch, f"{sh}:19 --model eva02_")
    out["epochs"] = (epochs, f"{sh}:16 --epochs {int(epochs)}")
    out["global_batch"] = (batch, f"{sh}:14 --batch_size {batch // 4} per GPU x {sh}:9 --nproc_per_node=4")
    out["batch_size"] = (micro, "xrayfm:")
    return out


def _seg(base: str, sched: str, epochs: float, batch: int, lines: dict[str, int]) -> dict[str, tuple[Any, str]]:
    data = f"segmentation/config/__base__/datasets/{base}.py"
    schedule = f"segmentation/config/__base__/schedules/{sched}.py"
    return {
        "arch": ("eva_x_small_patch16", f"{MODEL}:8-15"),
        "img_size": (512, f"{data}:{lines['scale']} img_scale=(512, 512)"),
        "mode": ("full", f"{schedule}:7-8"),
        "decoder": ("upernet", f"{MODEL}:34 UPerHead"),
        "features": ("last", f"{MODEL}:31 use_last_feat_only=True"),
        "decoder_dropout": (0.1, f"{MODEL}:39 dropout_ratio=0.1"),
        "seg_loss": ("bce", "use_sigmoid=True, out_channels=1"),
        "drop_path": (0.15, f"{MODEL}:17 drop_path_rate=0.15"),
        "optimizer": ("adamw", f"{schedule}:3 type='AdamW'"),
        "betas": ("0.9,0.999", f"{schedule}:5 betas=(0.9, 0.999)"),
        "lr": (6e-5, f"{schedule}:4 lr=6e-5"),
        "weight_decay": (0.05, f"{schedule}:6 weight_decay=0.05"),
        "layer_decay": (0.85, f"{schedule}:8 layer_decay_rate=0.85"),
        "schedule": ("poly", f"{schedule}:13 policy='poly'"),
        "poly_power": (1.0, f"{schedule}:17 power=1.0"),
        "min_lr": (0.0, f"{schedule}:17 min_lr=0.0"),
        "warmup": (10, f"{schedule}:14-15 warmup='linear', warmup_iters=10"),
        "warmup_epochs": (0.0, f"{schedule}:15"),
        "epochs": (epochs, f"{schedule}:19 max_epochs={int(epochs)}"),
        "global_batch": (batch, f"{data}:{lines['spg']} samples_per_gpu={batch}"),
        "batch_size": (batch, f"{data}:{lines['spg']} samples_per_gpu={batch}"),
        "clip_grad": (0.0, f"{schedule}:10 optimizer_config = dict()"),
        "augment": ("photometric", f"{data}:{lines['resize']}-{lines['photo']} Resize keep_ratio=False"),
        "flip": (0.5, f"{data}:{lines['flip']} RandomFlip prob=0.5"),
        "interpolation": ("bilinear", f"{data}:{lines['resize']} Resize"),
        "crop_pct": (1.0, f"{data}:{lines['test']} test Resize to 512 x 512"),
    }


def _mim(arch: str, epochs: float, readme_line: int, micro: int) -> dict[str, tuple[Any, str]]:
    return {
        "arch": (arch, f"README.md:{readme_line}"),
        "img_size": (224, "models_eva.py:786 pt_hw_seq_len=14"),
        "mask_ratio": (0.3, "paper (arXiv:2405.05237"),
        "epochs": (epochs, f"README.md:{readme_line} MIM epochs {int(epochs)}"),
        "global_batch": (2048, "xrayfm:"),
        "batch_size": (micro, "xrayfm:"),
        "optimizer": ("adamw", "xrayfm:"),
        "lr": (1.2e-3, "xrayfm: MAE's rule base lr 1.5e-4 x global_batch / 256"),
        "betas": ("0.9,0.98", "xrayfm:"),
        "weight_decay": (0.05, "xrayfm:"),
        "schedule": ("cosine", "xrayfm:"),
        "min_lr": (1e-6, "xrayfm:"),
        "warmup_epochs": (40.0, "xrayfm: MAE's 40 warmup epochs"),
        "clip_grad": (3.0, "xrayfm:"),
        "precision": ("auto", "xrayfm:"),
        "checkpoint_every": (1000, "xrayfm:"),
        "log_every": (50, "xrayfm:"),
    }


PINS: dict[str, dict[str, tuple[Any, str]]] = {
    "eva_x_cls_chestxray14_tiny": _cxr14(CLS + "vit_ti.sh", "eva_x_tiny_patch16", 45.0, 1024, 64),
    "eva_x_cls_chestxray14": _cxr14(CLS + "vit_s.sh", "eva_x_small_patch16", 30.0, 1024, 64),
    "eva_x_cls_chestxray14_base": _cxr14(CLS + "vit_b.sh", "eva_x_base_patch16", 10.0, 512, 32),
    "eva_x_cls_chexpert": {
        "arch": ("eva_x_small_patch16", f"{CHX}:25 --model eva02_small_patch16"),
        "option": (
            [
                "label_set=competition",
                "views=frontal",
                "policy=zeros",
                "label_policies=Atelectasis=ones,Edema=ones",
                "blank=zero",
                "val_fraction=0",
            ],
            "chexpert adapter options",
        ),
        "eval_split": (["test"], f"{CHX}:7 test list valid.csv"),
        "img_size": (224, "classification/train.py:42"),
        "mode": ("full", "classification/train.py:383"),
        "optimizer": ("adamw", "classification/train.py:429-430"),
        "betas": ("0.9,0.999", "classification/train.py:430"),
        "lr": (1e-3, f"{CHX}:23 --blr 1e-3; train.py:411 lr = blr"),
        "weight_decay": (0.05, f"{CHX}:23 --weight_decay 0.05"),
        "layer_decay": (0.55, f"{CHX}:23 --layer_decay 0.55"),
        "schedule": ("constant", f"{CHX}:24 --fixed_lr"),
        "warmup_epochs": (0.0, f"{CHX}:26 --warmup_epochs 0"),
        "warmup": (0, f"{CHX}:26 --warmup_epochs 0"),
        "epochs": (5.0, "classification/README.md:107 FT epochs 5"),
        "global_batch": (1024, f"{CHX}:20 --batch_size 256 per GPU x {CHX}:14 --nproc_per_node=4"),
        "batch_size": (64, "xrayfm:"),
        "clip_grad": (0.0, "classification/train.py:52"),
        "drop_path": (0.15, f"{CHX}:27 --drop_path 0.15"),
        "dropout": (0.0, f"{CHX}:27 --vit_dropout_rate 0"),
        "head_init_scale": (0.001, "models_eva.py:478 init_scale=0.001"),
        "focal_gamma": (0.0, "classification/train.py:443-444 BCEWithLogitsLoss"),
        "augment": ("none", "classification/utils/datasets.py:113-124"),
        "interpolation": ("bicubic", "classification/utils/datasets.py:122 and :127"),
        "crop_pct": (0.875, "classification/utils/datasets.py:117 and :126-129"),
        "seed": (14, f"{CHX}:37 --seed 14"),
    },
    "eva_x_seg_lungs": {
        **_seg("lung", "schedule_10ep_adamw", 10.0, 4, dict(scale=6, resize=10, flip=11, photo=12, spg=33, test=25)),
        "task": (["lungs"], "datasets/lung.py:42 classes ['normal', 'lung']"),
    },
    "eva_x_seg_shenzhen": {
        **_seg("shenzhen", "schedule_50ep_adamw", 50.0, 8, dict(scale=5, resize=9, flip=10, photo=11, spg=32, test=24)),
        "task": (["lungs"], "upernet_eva_x_small_shenzhen_50ep.py:12"),
        "option": (["masks=require"], "datasets/shenzhen.py:38 ann_dir"),
    },
    "eva_x_seg_siim": {
        **_seg("siim", "schedule_50ep_adamw", 50.0, 8, dict(scale=6, resize=9, flip=10, photo=11, spg=32, test=24)),
        "task": (["pneumothorax_mask"], "datasets/siim.py:41"),
    },
    "eva_x_mim_tiny": _mim("eva_x_tiny_patch16", 900.0, 61, 256),
    "eva_x_mim_small": _mim("eva_x_small_patch16", 600.0, 62, 128),
    "eva_x_mim_base": _mim("eva_x_base_patch16", 600.0, 63, 64),
}
#: The paper's sources a citation may name; anything else must say ``xrayfm:`` (xrayfm's own choice).
SOURCES = re.compile(r"classification/|segmentation/|Adam-v1/|README\.md:|paper|arXiv:|xrayfm:")


def _lines(name: str) -> dict[str, str]:
    """Top-level key -> its line's comment (option list items are checked on their own lines)."""
    out = {}
    for line in (RECIPES / f"{name}.yaml").read_text().splitlines():
        match = re.match(r"^([a-z_]+):.*?#\s*(.+)$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def _parse(name: str) -> Any:
    command = ["pretrain", "mim"] if "_mim_" in name else ["finetune"]
    return parse_with_recipe(build_parser(), [*command, "--config", name, "chexpert", "ROOT"])


def test_every_paper_recipe_is_pinned() -> None:
    assert set(PINS) <= set(list_recipes())
    assert {n for n in list_recipes() if n.startswith("eva_x_") and "uones" not in n} == set(PINS)


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_value_line_cites_its_source(name: str) -> None:
    for line in (RECIPES / f"{name}.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        value, sep, comment = line.partition("#")
        assert sep and comment.strip(), f"{name}: no citation on {line!r}"
        assert SOURCES.search(comment) or value.rstrip().endswith(":"), f"{name}: {comment!r} cites no source"


@pytest.mark.parametrize("name", sorted(PINS))
def test_recipe_holds_the_pinned_values_with_their_citations(name: str) -> None:
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    assert set(recipe) == set(PINS[name]), f"{name}: unpinned or missing keys"
    comments = _lines(name)
    for key, (_, citation) in PINS[name].items():
        assert citation in comments[key], f"{name}.{key}: comment {comments[key]!r} lacks {citation!r}"


@pytest.mark.parametrize("name", sorted(PINS))
def test_recipe_parses_through_the_command_to_the_pinned_values(name: str) -> None:
    args = _parse(name)
    for key, (value, _) in PINS[name].items():
        got = getattr(args, key)
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, f"{name}.{key}: {got!r}"


@pytest.mark.parametrize("name", sorted(n for n in PINS if "_mim_" not in n))
def test_finetune_recipe_resolves_to_the_official_settings(name: str) -> None:
    cfg = finetune_config(_parse(name))
    assert cfg.train.betas == (0.9, 0.999) and cfg.train.optimizer == "adamw"
    if cfg.augment == "randaugment":
        assert cfg.crop_scale == (0.08, 1.0)
    if name == "eva_x_cls_chexpert":
        opts = cfg.dataset_options
        assert opts["label_set"] == "competition" and opts["policy"] == "zeros" and opts["val_fraction"] == 0
        assert opts["label_policies"] == ("Atelectasis=ones", "Edema=ones")


def test_training_view_and_test_view_follow_the_recipe_options() -> None:
    from xrayfm.data.transforms import EvalResize, FinetuneAugment, PhotometricView, RandAugmentView
    from xrayfm.finetune.run import FinetuneConfig, model_preprocess, training_view
    from xrayfm.models import create_model

    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64)
    cfg = FinetuneConfig(dataset="phantom", root="R", img_size=64, interpolation="bilinear", crop_pct=0.875)
    record = model_preprocess(cfg, backbone)
    assert (record.input_size, record.interpolation, record.crop_pct) == (64, "bilinear", 0.875)
    assert model_preprocess(FinetuneConfig(dataset="phantom", root="R", img_size=64), backbone).crop_pct == 1.0
    views = {"basic": FinetuneAugment, "randaugment": RandAugmentView, "photometric": PhotometricView}
    for augment, kind in views.items():
        cfg.augment = augment
        assert isinstance(training_view(cfg, record), kind)
    cfg.augment = "none"  # EVA-X CheXpert: the training view is the test view
    view = training_view(cfg, record)
    assert isinstance(view, EvalResize) and (view.size, view.crop_pct) == (64, 0.875)
