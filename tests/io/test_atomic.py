"""Atomic writes: the destination is replaced whole or not at all, temporaries never linger."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writers_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.json"
    assert atomic_write_text(dest, "old") == dest  # parent folders are created
    atomic_write_json(dest, {"a": 1, "path": tmp_path})  # unknown types become strings
    assert json.loads(dest.read_text(encoding="utf-8")) == {"a": 1, "path": str(tmp_path)}
    atomic_write_bytes(dest, b"\x00\x01")
    assert dest.read_bytes() == b"\x00\x01"
    assert _siblings(dest.parent) == ["out.json"]


def test_an_exception_leaves_the_original_and_removes_the_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "metrics.json"
    dest.write_text("original", encoding="utf-8")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(dest) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("killed")
    assert dest.read_text(encoding="utf-8") == "original"
    assert _siblings(tmp_path) == ["metrics.json"]


def test_temporaries_are_unique_hidden_siblings_with_the_destination_extension(tmp_path: Path) -> None:
    dest = tmp_path / "image.png"
    with atomic_path(dest) as a, atomic_path(dest) as b:  # e.g. two DataLoader workers at once
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(".image.png.") and a.suffix == ".png"
        for tmp, value in ((a, 0), (b, 255)):
            Image.fromarray(np.full((2, 3), value, np.uint8)).save(tmp)  # Pillow picks PNG by the suffix
    assert np.asarray(Image.open(dest)).tolist() == [[0, 0, 0], [0, 0, 0]]  # the last rename wins
    assert _siblings(tmp_path) == ["image.png"]


def test_a_folder_is_swapped_in_whole(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint"
    dest.mkdir()
    (dest / "old.bin").write_bytes(b"old")
    with atomic_path(dest, directory=True) as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "shard0.bin").write_bytes(b"new")
    assert _siblings(dest) == ["shard0.bin"] and (dest / "shard0.bin").read_bytes() == b"new"
    assert _siblings(tmp_path) == ["checkpoint"]


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    dest = tmp_path / "checkpoint"
    dest.mkdir()
    (dest / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(dest, directory=True) as tmp:
            tmp.mkdir()
            (tmp / "shard0.bin").write_bytes(b"partial")
            raise OSError("disk full")
    assert _siblings(dest) == ["old.bin"]
    assert _siblings(tmp_path) == ["checkpoint"]


def test_a_folder_replaces_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.write_bytes(b"a file")
    with atomic_path(dest, directory=True) as tmp:
        tmp.mkdir()
    assert dest.is_dir() and _siblings(tmp_path) == ["model"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.usefixtures("umask_022")
def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    text = atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.npy") as tmp:
        np.save(tmp, np.zeros(2))
    for path in (text, tmp_path / "b.npy"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600
