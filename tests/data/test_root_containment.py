"""Image and mask files named by label files stay inside the dataset root unless the user allows otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm import DatasetError
from xrayfm.cli import main
from xrayfm.data import build_dataset
from xrayfm.data.tables import RootCheck


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def _csv_root(tmp_path: Path, image: str, mask: str = "m.png") -> Path:
    """A csv root whose second row names ``image`` (and ``mask``), plus an ordinary first row."""
    root = tmp_path / "root"
    _png(root / "a.png")
    _png(root / "m.png", 1)
    (root / "labels.csv").write_text(f"image,mask,split,sick\na.png,m.png,train,1\n{image},{mask},test,0\n")
    return root


def _ways_out(tmp_path: Path) -> dict[str, str]:
    """Label-file cells that lead outside ``tmp_path / "root"`` to a real image next to it."""
    outside = _png(tmp_path / "outside.png", 200)
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "root" / "link.png").symlink_to(outside)
    (tmp_path / "root" / "sub").mkdir()
    (tmp_path / "root" / "sub" / "up").symlink_to(tmp_path)
    return {
        "dotdot": "../outside.png",
        "absolute": str(outside),
        "symlinked file": "link.png",
        "symlinked folder": "sub/up/outside.png",
    }


@pytest.mark.parametrize("way", ["dotdot", "absolute", "symlinked file", "symlinked folder"])
def test_csv_image_outside_the_root_is_refused_naming_the_row(tmp_path: Path, way: str) -> None:
    cell = _ways_out(tmp_path)[way]
    root = _csv_root(tmp_path, cell)
    message = rf"csv: labels.csv row 3: image .*{cell.split('/')[-1]} resolves to {tmp_path / 'outside.png'}, "
    with pytest.raises(DatasetError, match=message + r"outside the dataset root .*allow_outside_root=true"):
        build_dataset("csv", root, "all", mask_columns=("mask",))
    with pytest.raises(DatasetError, match="row 3"):  # refused even when nothing is checked for existence
        build_dataset("csv", root, "test", missing="keep")
    ds = build_dataset("csv", root, "all", mask_columns=("mask",), allow_outside_root=True)
    assert float(ds[1]["image"].max()) == pytest.approx(200 / 255)


@pytest.mark.parametrize("way", ["dotdot", "absolute", "symlinked file"])
def test_csv_mask_outside_the_root_is_refused(tmp_path: Path, way: str) -> None:
    cell = _ways_out(tmp_path)[way]
    root = _csv_root(tmp_path, "a.png", mask=cell)
    with pytest.raises(DatasetError, match=r"csv: labels.csv row 3: mask .* outside the dataset root"):
        build_dataset("csv", root, "all", mask_columns=("mask",))
    assert len(build_dataset("csv", root, "all", mask_columns=("mask",), allow_outside_root=True)) == 2


def test_jsrt_lung_label_linked_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "jsrt"
    _png(root / "Train" / "Images" / "JPCLN001.png")
    (root / "Train" / "Labels").mkdir(parents=True)
    label = root / "Train" / "Labels" / "JPCLN001_labels.png"
    label.symlink_to(_png(tmp_path / "elsewhere" / "secret.png", 1))
    with pytest.raises(DatasetError, match=r"jsrt: mask .*JPCLN001_labels.png resolves to .*secret.png, outside"):
        build_dataset("jsrt", root, "all")
    assert build_dataset("jsrt", root, "all", allow_outside_root=True)[0]["mask"].shape == (1, 8, 8)
    assert len(build_dataset("jsrt", root, "all", masks=False)) == 1  # the image alone stays inside


def test_coco_file_name_outside_the_root_names_the_entry(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _png(tmp_path / "outside.png")
    coco = {
        "images": [{"id": 7, "file_name": "../../outside.png", "width": 8, "height": 8}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 3, 3]}],
        "categories": [{"id": 1, "name": "nodule"}],
    }
    (root / "images").mkdir(parents=True)
    (root / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"coco: annotations.json image id 7: image .* outside the dataset root"):
        build_dataset("coco", root, "all")


def test_symlinked_root_and_links_inside_it_work(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "data"
    _png(real / "images" / "a.png")
    _png(real / "b.png")
    (real / "images" / "b.png").symlink_to(real / "b.png")  # a link that stays inside
    (real / "labels.csv").write_text("image,split,sick\nimages/a.png,train,1\nimages/b.png,test,0\n")
    link = tmp_path / "root"
    link.symlink_to(real)
    for root in (link, real, Path(os.path.relpath(link))):
        assert len(build_dataset("csv", root, "all")) == 2


def test_cli_inspect_refuses_in_one_line_and_accepts_the_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _csv_root(tmp_path, _ways_out(tmp_path)["dotdot"])
    assert main(["inspect", str(root), "--check", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels.csv row 3" in err and "allow_outside_root" in err
    assert main(["inspect", str(root), "--check", "-1", "-o", "allow_outside_root=true"]) == 0
    assert "2 images" in capsys.readouterr().out


def test_the_option_is_listed_for_every_adapter(capsys: pytest.CaptureFixture) -> None:
    assert main(["datasets", "montgomery"]) == 0
    assert "allow_outside_root = False" in capsys.readouterr().out


def test_root_check_resolves_like_realpath(tmp_path: Path) -> None:
    (tmp_path / "root" / "d").mkdir(parents=True)
    (tmp_path / "root" / "d" / "back").symlink_to(tmp_path / "root")
    (tmp_path / "root" / "d" / "out").symlink_to(tmp_path)
    check = RootCheck([tmp_path / "root"])
    for rel in ("d/x.png", "d/back/x.png", "d/out/x.png", "d/out/root/d/x.png", "d/back/../x.png", "missing/x.png"):
        path = tmp_path / "root" / rel
        assert check.resolve(path) == os.path.realpath(path), rel
    assert check.contains(check.resolve(tmp_path / "root" / "d/back/x.png"))
    assert not check.contains(check.resolve(tmp_path / "root" / "d/out/x.png"))
    assert not check.contains(str(tmp_path / "root2" / "x.png"))  # a sibling sharing the prefix
