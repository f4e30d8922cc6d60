"""DICOM uploads read in child processes (:mod:`xrayfm.io.sandbox`, tested on its own in tests/io/test_sandbox.py):
a decoder that kills or hangs its process costs one upload a 400."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sandbox_readers import hang_on_marker
from serve_helpers import png_bytes

from xrayfm.errors import XrayfmError
from xrayfm.io.sandbox import DecodeSandbox
from xrayfm.io.writers import write_dicom
from xrayfm.serve.app import create_app

#: Fuzzed DICOM files (tests/fuzz_inputs.py mutations of JPEG 2000 and JPEG Lossless SV1 files) on which
#: GDCM, through pydicom, aborted (uncaught C++ exception) and segfaulted inside read_xray.
CRASHERS = sorted((Path(__file__).parents[1] / "io" / "data").glob("gdcm_*.dcm"))


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    pixels = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    return write_dicom(tmp_path_factory.mktemp("dicom") / "a.dcm", pixels).read_bytes()


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
