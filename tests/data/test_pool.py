"""Dataset pools: source syntax, de-duplication, patient-level test exclusion, weights, merged tasks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.pool import build_pool
from xrayfm.data.pool_sources import PoolSource, parse_source, parse_sources
from xrayfm.data.registry import build_dataset
from xrayfm.errors import DatasetError, UnknownNameError, XrayfmError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two 64-px phantom sets; their image ids coincide (``phantom_000000``...), their pixels do not."""
    base = tmp_path_factory.mktemp("pool")
    a = write_phantom_dataset(base / "a", n=12, seed=0, size=64)
    return a, write_phantom_dataset(base / "b", n=12, seed=1, size=64)


def test_parse_source_text_and_pool_keys() -> None:
    src = parse_source("csv:/data/jsrt?mask_columns=mask&label_columns=()&weight=2.5&source=jsrt&seed=3")
    assert src == PoolSource(
        "csv", Path("/data/jsrt"), {"mask_columns": "mask", "label_columns": (), "seed": 3}, 2.5, "jsrt"
    )
    assert parse_source("nih_cxr14:C:/nih").root == Path("C:/nih")  # only the first ':' separates the adapter
    for bad in ("no_colon", "csv:", "csv:/x?flag", "csv:/x?weight=heavy", "csv:/x?weight=0"):
        with pytest.raises(XrayfmError):
            parse_source(bad)


def test_yaml_pool_file(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(
        "sources:\n  - {adapter: phantom, root: /a, weight: 2}\n"
        "  - {adapter: csv, root: /b, options: {mask_columns: [mask]}, source: bee}\n"
        "exclude_test:\n  - {adapter: csv, root: /b}\n"
    )
    sources, excluded = parse_sources([str(path), "phantom:/c"])
    assert [(s.adapter, s.root, s.weight, s.label) for s in sources] == [
        ("phantom", Path("/a"), 2.0, None),
        ("csv", Path("/b"), 1.0, "bee"),
        ("phantom", Path("/c"), 1.0, None),
    ]
    assert sources[1].options == {"mask_columns": ("mask",)} and [e.root for e in excluded] == [Path("/b")]
    path.write_text("sources: [{root: /a}]\n")
    with pytest.raises(XrayfmError, match="adapter and root"):
        parse_sources([str(path)])


def test_dedupe_by_id_keeps_the_first_source(phantoms: tuple[Path, Path]) -> None:
    a, b = phantoms
    pool = build_pool([f"phantom:{a}", f"phantom:{b}"])
    assert len(pool) == 12 and {r.meta["source"] for r in pool.records} == {f"phantom:{a.name}"}
    assert all(r.image.parent.parent == a for r in pool.records)
    dropped = pool.report[f"phantom:{b.name}"]["splits"]
    assert sum(c["duplicates"] for c in dropped.values()) == 12 and sum(c["kept"] for c in dropped.values()) == 0
    assert len(build_pool([f"phantom:{a}", f"phantom:{b}"], dedupe="none")) == 24
    assert len(build_pool([f"phantom:{a}", f"phantom:{b}"], dedupe="hash")) == 24  # same ids, other pixels
    shutil.copytree(a, a.parent / "a_copy", dirs_exist_ok=True)
    assert len(build_pool([f"phantom:{a}", f"phantom:{a.parent / 'a_copy'}"], dedupe="hash")) == 12


def test_test_patients_are_excluded_at_patient_level(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = phantoms
    table = pd.read_csv(a / "labels.csv")
    test = table[table["split"] == "test"]
    assert test.groupby("patient_id").size().max() > 1  # patients with several images
    # another copy of the phantom (same adapter, other folder) holding one image of each of A's test patients
    down = tmp_path / "down"
    shutil.copytree(a, down)
    table[table["image"].isin(test.groupby("patient_id").head(1)["image"])].to_csv(down / "labels.csv", index=False)
    pool = build_pool([f"phantom:{a}"], exclude_test=[f"phantom:{down}"])
    kept = {r.meta["id"] for r in pool.records}
    test_ids = {Path(p).stem for p in test["image"]}
    # all images of those patients are gone, not only the copies the downstream set holds
    assert kept == {Path(p).stem for p in table["image"]} - test_ids
    assert sum(c["excluded_test"] for c in pool.report["phantom"]["splits"].values()) == len(test_ids)
    # the same folder read by another adapter (other name, other split) is matched by its root
    other = build_pool([f"csv:{a}?split_column=&seed=1&boxes_file=None"], exclude_test=[f"phantom:{a}"])
    assert not {r.meta["patient_id"] for r in other.records} & set(test["patient_id"])
    moved = {r.meta["split"] for r in build_pool([f"csv:{a}?split_column=&seed=1"]).records if r.meta["id"] in test_ids}
    assert moved - {"test"}  # so the exclusion above was not just the test split being dropped


def test_weights_repeat_and_subsample_train_only(phantoms: tuple[Path, Path]) -> None:
    a, _ = phantoms
    base = build_pool([f"phantom:{a}"])
    n = {s: sum(r.meta["split"] == s for r in base.records) for s in ("train", "val", "test")}
    double = build_pool([f"phantom:{a}?weight=2"])
    assert sum(r.meta["split"] == "train" for r in double.records) == 2 * n["train"]
    assert sum(r.meta.get("repeat") == 1 for r in double.records) == n["train"]
    assert sum(r.meta["split"] != "train" for r in double.records) == n["val"] + n["test"]
    half = [r.meta["id"] for r in build_pool([f"phantom:{a}?weight=0.5"]).split_dataset("train").records]
    again = [r.meta["id"] for r in build_pool([f"phantom:{a}?weight=0.5"]).split_dataset("train").records]
    other_seed = [r.meta["id"] for r in build_pool([f"phantom:{a}?weight=0.5"], seed=7).split_dataset("train").records]
    assert half == again and 0 < len(half) < n["train"] and (half != other_seed or len(half) == n["train"])


def test_tasks_merge_by_class_name_with_nan_and_ignore(phantoms: tuple[Path, Path]) -> None:
    a, b = phantoms
    narrow = f"csv:{b}?label_columns=nodule,effusion&mask_columns=heart_mask&mask_classes=heart&boxes_file=None"
    pool = build_pool([f"phantom:{a}", narrow], dedupe="none")
    labels, masks = pool.task_for("labels"), pool.task_for("mask")
    assert labels.classes == ("nodule", "effusion", "pneumothorax", "cardiomegaly", "consolidation")
    assert masks.classes == ("lungs", "heart", "lesions") and pool.task_for("boxes").num_classes == 4
    i = next(i for i, r in enumerate(pool.records) if r.meta["source"] == "csv")
    own = build_dataset("csv", b, "all", label_columns=("nodule", "effusion"), mask_columns=("heart_mask",),
                        mask_classes=("heart",), boxes_file=None)  # fmt: skip
    sample = pool[i]
    j = next(j for j, r in enumerate(own.records) if r.image == pool.records[i].image)
    ref = own[j]
    assert np.array_equal(sample["labels"][:2].numpy(), ref["labels"].numpy()) and sample["labels"][2:].isnan().all()
    assert (sample["mask"][[0, 2]] == 255).all() and np.array_equal(sample["mask"][1], ref["mask"][0])
    assert "boxes" not in sample and "boxes" in pool[0]
    bare = build_pool([f"phantom:{a}"], targets=())
    assert bare.tasks == [] and set(bare[0]) == {"image", "meta"}


def test_pool_errors(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = phantoms
    with pytest.raises(UnknownNameError):
        build_pool(["nosuchadapter:/x"])
    with pytest.raises(DatasetError, match="no source"):
        build_pool([])
    with pytest.raises(DatasetError, match="empty"):
        build_pool([f"phantom:{a}"], exclude_test=[f"phantom:{a}"], splits=("test",))
    with pytest.raises(XrayfmError, match="distinct labels"):
        build_pool([f"phantom:{a}?source=x", f"phantom:{a}?source=x"])
