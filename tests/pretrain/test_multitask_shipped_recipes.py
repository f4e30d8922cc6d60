"""The shipped Foundation X recipes: every value cites its source, the paper recipe has the paper's 20 slots on the
11 adapters with their classes, and the shared-data recipe builds on the real sets of ../shared/datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

import xrayfm
from xrayfm.data.datasets import (
    candid_ptx,
    chestx_det,
    chexpert,
    nih_cxr14,
    node21,
    rsna_pneumonia,
    siim_acr,
    tbx11k,
    vindr_cxr,
)
from xrayfm.data.registry import list_datasets
from xrayfm.pretrain.multitask_data import build_recipe_datasets, unit_members
from xrayfm.pretrain.multitask_recipe import load_recipe

CONFIGS = Path(xrayfm.__file__).parent / "configs"
RECIPES = sorted(CONFIGS.glob("foundation_x_*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_value_line_of_a_shipped_recipe_cites_the_paper_or_says_it_is_xrayfms(path: Path) -> None:
    load_recipe(path)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert "# paper:" in line or "# xrayfm:" in line, f"{path.name}:{number} has no source: {line}"


def test_the_paper_recipe_has_the_papers_20_slots_on_its_11_datasets() -> None:
    recipe = load_recipe(CONFIGS / "foundation_x_paper.yaml")
    assert len(recipe.datasets) == 11 and len(recipe.cycle) == 20 and recipe.cycles == 150
    kinds = Counter("classification" if u.kind in ("multilabel", "multiclass") else u.kind for u in recipe.cycle)
    assert kinds == {"classification": 11, "detection": 6, "segmentation": 3}  # paper Table 1
    assert all(u.lock_fraction == 0.5 for u in recipe.cycle if u.kind in ("detection", "segmentation"))
    assert all(u.lock_fraction == 0 for u in recipe.cycle if u.kind in ("multilabel", "multiclass"))
    assert (recipe.ema.momentum, recipe.ema.every, recipe.consistency_weight) == (0.8, "phase", 0.5)
    assert {e.adapter for e in recipe.datasets.values()} <= {d.name for d in list_datasets()}
    from xrayfm.models.heads.deformable_detr import detr_config

    config = detr_config(recipe.detr)  # DINO's sizes, with its iterative box refinement
    assert (config.d_model, config.decoder_layers, config.num_queries, config.with_box_refine) == (256, 6, 900, True)


def test_the_paper_recipe_classes_are_the_adapters_classes_in_their_order() -> None:
    recipe = load_recipe(CONFIGS / "foundation_x_paper.yaml")

    def classes(unit: str) -> tuple[str, ...]:
        dataset, task = unit.split("/")
        return recipe.datasets[dataset].tasks[task].spec.classes

    assert classes("chexpert/findings") == classes("mimic/findings") == chexpert.CHEXPERT_LABELS
    assert classes("nih/findings") == nih_cxr14.FINDINGS
    assert classes("tbx11k/tuberculosis") == classes("tbx11k/lesions") == (tbx11k.TB,)
    assert classes("node21/nodule") == classes("node21/nodules") == (node21.NODULE,)
    assert classes("candid/mask") == classes("candid/boxes") == (candid_ptx.PNEUMOTHORAX,)
    assert classes("rsna/pneumonia") == rsna_pneumonia.DETAILED_CLASSES
    assert classes("rsna/lesions") == (rsna_pneumonia.OPACITY,)
    assert classes("vindr/diagnoses") == (*vindr_cxr.DIAGNOSES, vindr_cxr.NO_FINDING)
    assert classes("siim/pneumothorax") == classes("siim/boxes") == classes("siim/mask") == siim_acr.CLASSES
    for task in ("findings", "lesions", "masks"):
        assert classes(f"chestx_det/{task}") == chestx_det.CLASSES


def test_the_shared_recipe_builds_on_the_real_sets_and_units_read_their_annotated_images(
    shared_datasets: Path,
) -> None:
    recipe = load_recipe(CONFIGS / "foundation_x_shared.yaml")
    datasets = build_recipe_datasets(recipe, data_root=shared_datasets)
    members = unit_members(recipe, datasets)
    nih = datasets["nih"]
    boxed = {i for i, rec in enumerate(nih.records) if rec.boxes is not None}
    assert set(members["nih/lesions"]) == boxed and 0 < len(boxed) < len(nih) // 4  # 44 of 300 images have boxes
    assert len(members["tbx11k/lesions"]) == len(datasets["tbx11k"])  # every TBX11K image is box-annotated
    assert all(r.meta.get("split") in (None, "train") for ds in datasets.values() for r in ds.records)
    raw = yaml.safe_load((CONFIGS / "foundation_x_shared.yaml").read_text())
    assert set(raw["datasets"]) == {"nih", "tbx11k", "jsrt", "covid", "kermany"}
