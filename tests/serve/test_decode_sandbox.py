"""DICOM uploads read in child processes: a decoder that kills its process costs one upload a 400."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sandbox_readers import abort_on_crash_marker, hang_on_marker
from serve_helpers import png_bytes

from xrayfm import ImageReadError
from xrayfm.errors import XrayfmError
from xrayfm.io import read_xray
from xrayfm.io.writers import write_dicom
from xrayfm.serve.app import create_app
from xrayfm.serve.decode_sandbox import DecoderCrashed, DecodeSandbox, DecodeTimedOut

#: Fuzzed DICOM files (tests/fuzz_inputs.py mutations of JPEG 2000 and JPEG Lossless SV1 files) on which
#: GDCM, through pydicom, aborted (uncaught C++ exception) and segfaulted inside read_xray.
CRASHERS = sorted((Path(__file__).parent / "data").glob("gdcm_*.dcm"))


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    pixels = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    return write_dicom(tmp_path_factory.mktemp("dicom") / "a.dcm", pixels).read_bytes()


def test_a_child_reads_as_this_process_does(dicom: bytes) -> None:
    sandbox = DecodeSandbox(1)
    try:
        got = sandbox.read(dicom, target_size=32, name="upload")
        with pytest.raises(ImageReadError, match="upload: DICOM file has no pixel data"):  # errors come back
            sandbox.read(b"DICM" * 40, name="upload")
    finally:
        sandbox.close()
    here = read_xray(dicom, target_size=32, name="upload")
    np.testing.assert_array_equal(got.pixels, here.pixels)
    assert got.meta == here.meta


def test_a_crashing_child_costs_one_read_and_the_pool_comes_back(dicom: bytes) -> None:
    sandbox = DecodeSandbox(1, reader=abort_on_crash_marker)
    try:
        with pytest.raises(DecoderCrashed, match="upload: the DICOM decoder crashed"):
            sandbox.read(b"CRASH", name="upload")
        assert sandbox.crashes == 2  # tried once more in a fresh pool
        assert sandbox.read(dicom, name="upload").pixels.shape == (48, 40)
    finally:
        sandbox.close()


def test_a_hanging_child_is_stopped_at_the_deadline_and_the_pool_comes_back(dicom: bytes) -> None:
    sandbox = DecodeSandbox(1, reader=hang_on_marker, timeout=1.0)
    try:
        assert sandbox.read(dicom, name="upload").pixels.shape == (48, 40)  # the pool is up: no start-up in the wait
        started = time.monotonic()
        with pytest.raises(DecodeTimedOut, match="upload: decoding this file's pixel data took over 1 s"):
            sandbox.read(b"HANG", name="upload")
        assert 1.0 <= time.monotonic() - started < 10 and sandbox.crashes == 1  # not tried again
        assert sandbox.read(dicom, name="upload").pixels.shape == (48, 40)
        time.sleep(1.2)  # a finished read's timer is disarmed: the idle child lives on past the deadline
        assert sandbox.read(dicom, name="upload").pixels.shape == (48, 40) and sandbox.crashes == 1
    finally:
        sandbox.close()


def test_a_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        DecodeSandbox(1, timeout=0)


@pytest.mark.skipif(not CRASHERS, reason="the fuzzed DICOM files are missing")
def test_files_that_crashed_the_decoder_get_a_400_and_the_server_serves_on(model_dir: Path) -> None:
    with TestClient(create_app(model_dir)) as client:
        for path in CRASHERS:
            res = client.post("/predict", files={"file": (path.name, path.read_bytes(), "application/dicom")})
            assert res.status_code == 400 and res.json()["detail"].startswith("upload: "), res.text
        assert client.post("/predict", files={"file": ("x.png", png_bytes(64, 64), "image/png")}).status_code == 200


def test_a_dicom_upload_whose_decoder_hangs_gets_a_400_and_the_server_serves_on(
    model_dir: Path, dicom: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xrayfm.serve.app as app_module

    monkeypatch.setattr(app_module, "DecodeSandbox", partial(DecodeSandbox, reader=hang_on_marker))
    hanging = b"HANG" + dicom[4:]  # the 128-byte preamble is free: the file is still a valid DICOM
    with TestClient(create_app(model_dir, decode_timeout=1.0)) as client:
        assert client.post("/predict", files={"file": ("a.dcm", dicom, "application/dicom")}).status_code == 200
        res = client.post("/predict", files={"file": ("h.dcm", hanging, "application/dicom")})
        assert res.status_code == 400 and "took over 1 s" in res.json()["detail"], res.text
        assert client.post("/predict", files={"file": ("a.dcm", dicom, "application/dicom")}).status_code == 200
    with pytest.raises(XrayfmError, match="--decode-timeout must be positive"):
        create_app(model_dir, decode_timeout=0)
