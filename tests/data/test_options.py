"""Adapter options given as ``-o key=value`` strings are fitted to the builder's annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm import DatasetError
from xrayfm.cli.recipes import parse_options
from xrayfm.data import build_dataset, get_dataset_info


def _csv_root(tmp_path: Path) -> Path:
    """Two images with one mask column and a 0/1 label column."""
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(tmp_path / f"{name}_m.png")
    (tmp_path / "labels.csv").write_text("image,mask,split,sick\na.png,a_m.png,train,1\nb.png,b_m.png,test,0\n")
    return tmp_path


def test_single_value_of_a_tuple_option_is_one_element(tmp_path: Path) -> None:
    root = _csv_root(tmp_path)
    ds = build_dataset("csv", root, "all", **parse_options(["mask_columns=mask", "label_columns=sick"]))
    assert ds.task_for("mask").classes == ("mask",) and ds.task_for("labels").classes == ("sick",)
    assert ds.load(0)["mask"].shape[0] == 1


@pytest.mark.parametrize(
    "name, pairs, expected",
    [
        ("csv", ["mask_columns=mask"], {"mask_columns": ("mask",)}),
        ("csv", ["label_columns=a,b"], {"label_columns": ("a", "b")}),
        ("csv", ["label_columns=2017"], {"label_columns": ("2017",)}),  # a number-named column
        ("csv", ["boxes_complete=true", "seed=3"], {"boxes_complete": True, "seed": 3}),
        ("csv", ["split_column=", "boxes_file=None"], {"split_column": "", "boxes_file": None}),
        ("mask_folder", ["values=255", "extensions=.png"], {"values": (255,), "extensions": (".png",)}),
        ("mimic_cxr", ["views=PA"], {"views": "PA"}),  # str | tuple: a string stays a string
        ("chexpert", ["val_fraction=0"], {"val_fraction": 0.0}),
        ("siim_acr", ["mask_size=512,512"], {"mask_size": (512, 512)}),
    ],
)
def test_coerce_options(name: str, pairs: list[str], expected: dict[str, object]) -> None:
    got = get_dataset_info(name).coerce_options(parse_options(pairs))
    assert got == expected
    assert all(type(got[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    "name, pair, message",
    [
        ("csv", "boxes_complete=yes", r"option boxes_complete='yes' must be true or false"),
        ("csv", "seed=1.5", r"option seed=1.5 must be an integer"),
        ("csv", "mask_ignore_value=x", r"option mask_ignore_value='x' must be an integer or None"),
        ("chexpert", "val_fraction=a", r"option val_fraction='a' must be a number"),
        ("csv", "labels_file=a,b", r"option labels_file=\('a', 'b'\) must be a string"),
        ("mask_folder", "values=a", r"option values='a' must be a comma-separated list of integers or None"),
        ("siim_acr", "mask_size=512", r"option mask_size=512 must be 2 comma-separated values"),
    ],
)
def test_option_of_the_wrong_type_names_it(tmp_path: Path, name: str, pair: str, message: str) -> None:
    with pytest.raises(DatasetError, match=f"dataset '{name}': {message}"):
        build_dataset(name, tmp_path, **parse_options([pair]))
