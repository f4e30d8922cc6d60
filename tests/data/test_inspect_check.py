"""``xrayfm inspect`` checking images several at once, DICOM in child processes: a file whose decoder kills its
process is a problem listed (only that file, though its death fails every read in flight with it), the check goes
on, and problems come in file order whatever the number of workers."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sandbox_readers import abort_on_crash_marker, rle_dicom

import xrayfm.data.inspect as inspect_module
from xrayfm.data import build_dataset
from xrayfm.data.inspect import check_files, inspect_path
from xrayfm.io import XrayImage, read_xray
from xrayfm.io.sandbox import DecoderCrashed, DecodeSandbox
from xrayfm.io.writers import write_png

CRASHERS = sorted((Path(__file__).parents[1] / "io" / "data").glob("gdcm_*.dcm"))


def test_a_dataset_check_lists_a_crashing_dicom_and_checks_the_rest(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "normal" / f"n{i}.png", np.full((24, 20), 0.2 + 0.2 * i, dtype=np.float32))
    (tmp_path / "abnormal").mkdir()
    for crasher in CRASHERS:
        shutil.copy(crasher, tmp_path / "abnormal" / crasher.name)
    for workers in (1, 2):
        summary = inspect_path(tmp_path, dataset="image_folder", check=-1, workers=workers)
        assert summary["checked"] == 5 and summary["image_sizes"] == {"20x24": 3}
        assert summary["problems"] == [
            f"{tmp_path / 'abnormal' / c.name}: the DICOM decoder crashed on this file's pixel data (damaged or "
            "hostile)"
            for c in CRASHERS
        ]


def test_only_the_file_that_crashes_alone_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 DICOM files read 3 at once in real child processes, the 5th crashing its child: whichever reads shared
    # its pool's death, only it is reported
    pixels = np.linspace(0, 1, 16 * 12, dtype=np.float32).reshape(16, 12)
    files = [rle_dicom(tmp_path / f"f{i:02d}.dcm", pixels) for i in range(12)]  # compressed: read in children
    files[4].write_bytes(b"CRASH" + files[4].read_bytes()[5:])  # the preamble is free: still a DICOM
    (tmp_path / "f07.dcm").write_bytes(b"not an image")  # an ordinary problem, kept in file order
    monkeypatch.setattr(inspect_module, "DecodeSandbox", partial(DecodeSandbox, reader=abort_on_crash_marker))
    sizes, problems = check_files(files, lambda path, read: "x".join(map(str, read(path).size)), workers=3)
    assert sizes == {"12x16": 10}
    assert len(problems) == 2 and problems[0].startswith(f"{files[4]}: the DICOM decoder crashed")
    assert problems[1].startswith(f"{files[7]}: ")


class SharedDeaths:
    """A stand-in decode sandbox: ``culprit.dcm`` always crashes its decoder; with several workers, the reads of
    ``n1.dcm`` and ``n2.dcm`` fail with it, as reads in flight in a pool whose child died do."""

    def __init__(self, workers: int, **_: object) -> None:
        self.workers = workers

    def __enter__(self) -> SharedDeaths:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read_file(self, path: Path, **options: object) -> XrayImage:
        READS.append((self.workers, path.name))
        if path.name == "culprit.dcm" or (self.workers > 1 and path.name in ("n1.dcm", "n2.dcm")):
            raise DecoderCrashed(f"{path}: the DICOM decoder crashed on this file's pixel data (damaged or hostile)")
        return XrayImage(np.zeros((16, 12), np.float32))


READS: list[tuple[int, str]] = []


@pytest.mark.parametrize("workers", [1, 3])
def test_reads_failed_with_a_dying_pool_are_tried_again_alone(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inspect_module, "DecodeSandbox", SharedDeaths)
    READS.clear()
    files = [Path(f"/data/{name}.dcm") for name in ("n0", "n1", "culprit", "n2", "n3")]
    sizes, problems = check_files(files, lambda path, read: "x".join(map(str, read(path).size)), workers=workers)
    assert sizes == {"12x16": 4}
    assert problems == ["/data/culprit.dcm: the DICOM decoder crashed on this file's pixel data (damaged or hostile)"]
    again = sorted(name for w, name in READS if w == 1) if workers > 1 else []
    assert again == (["culprit.dcm", "n1.dcm", "n2.dcm"] if workers > 1 else [])  # alone: only those that failed


def test_a_sample_is_read_with_the_reader_given(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png", np.zeros((8, 8), dtype=np.float32))
    ds = build_dataset("image_folder", tmp_path, "all")
    seen = []

    def spy(source, **options):  # noqa: ANN001, ANN202
        seen.append(Path(source).name)
        return read_xray(source, **options)

    assert ds.load(0, reader=spy)["image"].shape == (1, 8, 8) and seen == ["x.png"]
    ds.load(0)
    assert seen == ["x.png"]


def test_workers_below_one_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from xrayfm.cli import main

    assert main(["inspect", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers must be at least 1, got 0" in capsys.readouterr().err
