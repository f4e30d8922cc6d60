"""The CLI as a user runs it: real subprocesses of the installed ``xrayfm`` entry point."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run
from PIL import Image

from xrayfm.io.writers import write_png


def test_help_lists_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for cmd in (
        "phantom",
        "datasets",
        "inspect",
        "demo",
        "pretrain",
        "finetune",
        "evaluate",
        "explain",
        "serve",
        "export",
    ):
        assert cmd in res.stdout


def test_datasets_lists_every_adapter_and_shows_layout() -> None:
    res = run("datasets")
    assert res.returncode == 0
    for name in (
        "nih_cxr14",
        "chexpert",
        "mimic_cxr",
        "vindr_cxr",
        "rsna_pneumonia",
        "siim_acr",
        "shenzhen",
        "montgomery",
        "jsrt",
        "mura",
        "covidx",
        "tbx11k",
        "chestx_det",
        "node21",
        "candid_ptx",
        "image_folder",
        "csv",
        "coco",
        "mask_folder",
        "phantom",
    ):
        assert f"\n{name} " in "\n" + res.stdout, name
    res = run("datasets", "nih_cxr14")
    assert res.returncode == 0 and "Data_Entry_2017" in res.stdout and "missing = 'error'" in res.stdout


def test_unknown_dataset_is_one_clear_line() -> None:
    res = run("datasets", "nih_cxr41")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("xrayfm: error: unknown dataset 'nih_cxr41'")
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_inspect_corrupt_image_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    res = run("inspect", str(tmp_path / "bad.png"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "bad.png" in res.stderr


def test_explain_out_and_devices_mistakes_are_one_clear_line(tmp_path: Path, gradient_image) -> None:
    write_png(tmp_path / "chest.png", gradient_image)
    for out in (tmp_path / "heatmaps", tmp_path / "heat.txt"):
        res = run("explain", str(tmp_path / "model"), str(tmp_path / "chest.png"), "--out", str(out))
        assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert res.stderr.startswith(f"xrayfm: error: --out {out}: ") and "must end in .png, .jpg, .jpeg" in res.stderr
    res = run("pretrain", "mim", "phantom", str(tmp_path), "--devices", "abc", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "xrayfm: error: --devices must be a number of devices or 'auto', got 'abc'"


def test_a_bug_is_one_line_and_verbose_shows_its_traceback(tmp_path: Path) -> None:
    buggy = (
        "import sys\nimport xrayfm.cli.data as data\n"
        "def boom(args):\n    raise ZeroDivisionError('division by zero')\n"
        "data.cmd_datasets = boom\nfrom xrayfm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", buggy, "datasets"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr == "xrayfm: internal error: ZeroDivisionError: division by zero (run with -v for the traceback)\n"
    res = subprocess.run([sys.executable, "-c", buggy, "-v", "datasets"], capture_output=True, text=True, timeout=120)
    # the traceback down to the bug (Python 3.13 also prints the source line of code given with -c)
    assert res.returncode == 1 and re.search(r"Traceback .*, in boom\n(    .*\n)?ZeroDivisionError", res.stderr, re.S)
    assert res.stderr.strip().splitlines()[-1] == "xrayfm: internal error: ZeroDivisionError: division by zero"


def test_inspect_folder_reports_problems(tmp_path: Path, gradient_image) -> None:
    write_png(tmp_path / "ok.png", gradient_image)
    (tmp_path / "broken.png").write_bytes(b"")
    res = run("inspect", str(tmp_path), "--json", "--check", "-1")
    summary = json.loads(res.stdout)
    assert summary["images"] == 2 and len(summary["problems"]) == 1 and "empty" in summary["problems"][0]
    assert run("inspect", str(tmp_path), "--strict").returncode == 1


def test_inspect_lists_dicom_files_that_crash_their_decoder_and_goes_on(tmp_path: Path, gradient_image) -> None:
    # files on which GDCM aborted and segfaulted the process (tests/io/data): inspect decodes DICOM in a child
    write_png(tmp_path / "ok.png", gradient_image)
    for crasher in sorted((Path(__file__).parents[1] / "io" / "data").glob("gdcm_*.dcm")):
        shutil.copy(crasher, tmp_path / crasher.name)
    res = run("inspect", str(tmp_path), "--json", "--check", "-1")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["images"] == 3 and summary["checked"] == 3 and summary["image_sizes"] == {"64x48": 1}
    assert sorted(summary["problems"]) == [
        f"{tmp_path / name}: the DICOM decoder crashed on this file's pixel data (damaged or hostile)"
        for name in ("gdcm_abort_j2k.dcm", "gdcm_segfault_jpeg_lossless.dcm")
    ]
    res = run("inspect", str(tmp_path / "gdcm_abort_j2k.dcm"))  # one file: one line naming it, not an abort
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"xrayfm: error: {tmp_path / 'gdcm_abort_j2k.dcm'}: the DICOM decoder crashed on this file's pixel data "
        "(damaged or hostile)"
    )


def test_inspect_real_dataset(shared_datasets: Path) -> None:
    res = run("inspect", str(shared_datasets / "jsrt_lungs"), "-o", "mask_columns=('mask',)", "--check", "10", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["images"] == 247 and s["labels"]["nodule"]["positive"] == 154 and s["problems"] == []


@pytest.mark.parametrize("kind", ["a character device", "a FIFO"])
def test_inspect_names_a_device_or_fifo_and_does_not_hang(tmp_path: Path, kind: str) -> None:
    path = Path("/dev/null")
    if kind == "a FIFO":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)  # nothing writes to it: reading it would block for ever
    res = run("inspect", str(path), timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == f"xrayfm: error: {path}: not a regular file ({kind})"


def test_phantom_then_inspect(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    res = run("phantom", str(out), "-n", "24", "--size", "128")
    assert res.returncode == 0, res.stderr
    res = run("inspect", str(out), "--json", "--check", "-1")
    s = json.loads(res.stdout)
    assert s["dataset"] == "phantom" and s["images"] == 24 and s["problems"] == []
    assert {t["kind"] for t in s["tasks"]} == {"multilabel", "segmentation", "detection"}


@pytest.mark.parametrize("layout", ["nih_cxr14", "shenzhen", "montgomery", "coco"])
def test_phantom_public_layouts_are_detected_and_read(tmp_path: Path, layout: str) -> None:
    out = tmp_path / layout
    assert run("phantom", str(out), "-n", "12", "--size", "96", "--layout", layout).returncode == 0
    res = run("inspect", str(out), "--json", "--check", "-1")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["dataset"] == layout and s["images"] == 12 and s["problems"] == []


def test_demo_end_to_end(tmp_path: Path) -> None:
    res = run("demo", "--out", str(tmp_path / "demo"), "-n", "30", "--size", "128", "--steps", "4", "--img-size", "64",
              "--finetune-steps", "4")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Demo finished" in res.stdout and str(tmp_path / "demo") in res.stdout
    assert (tmp_path / "demo" / "phantom_summary.json").is_file()
    assert Image.open(tmp_path / "demo" / "phantom_contact_sheet.png").size == (1024, 1024)
    assert (tmp_path / "demo" / "mim" / "export" / "backbone.safetensors").is_file()
    assert len((tmp_path / "demo" / "mim" / "metrics.csv").read_text().splitlines()) == 5  # header + 4 steps
    assert (tmp_path / "demo" / "finetune" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "demo" / "finetune" / "eval_test" / "report.html").is_file()
    assert "mean_dice" in res.stdout and "report.html" in res.stdout
    ft = tmp_path / "demo" / "finetune"
    assert f"xrayfm serve {ft} --port 8000" in res.stdout and f"xrayfm export onnx {ft}" in res.stdout
