"""DICOM pixel data decoded in child processes (:mod:`xrayfm.io.sandbox`): a decoder that kills or hangs its
process costs that one read, and files on disk are split by format (DICOM in a child, the rest here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from sandbox_readers import abort_on_crash_marker, hang_on_marker, rle_dicom

from xrayfm import ImageReadError
from xrayfm.io import read_xray
from xrayfm.io.sandbox import DecoderCrashed, DecodeSandbox, DecodeTimedOut, native_decoder
from xrayfm.io.writers import write_dicom, write_png

#: Fuzzed DICOM files (tests/fuzz_inputs.py mutations of JPEG 2000 and JPEG Lossless SV1 files) on which
#: GDCM, through pydicom, aborted (uncaught C++ exception) and segfaulted inside read_xray.
CRASHERS = sorted((Path(__file__).parent / "data").glob("gdcm_*.dcm"))
PIXELS = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_dicom(tmp_path_factory.mktemp("dicom") / "a.dcm", PIXELS).read_bytes()


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


def test_the_crashing_files_are_kept() -> None:
    assert [p.name for p in CRASHERS] == ["gdcm_abort_j2k.dcm", "gdcm_segfault_jpeg_lossless.dcm"]


def test_read_file_decodes_compressed_dicom_in_a_child_and_the_rest_here(tmp_path: Path, dicom: bytes) -> None:
    png = write_png(tmp_path / "a.png", PIXELS)
    (tmp_path / "plain.dcm").write_bytes(dicom)
    rle = rle_dicom(tmp_path / "rle.dcm", PIXELS)
    crashing = tmp_path / "crash.dcm"
    crashing.write_bytes(b"CRASH" + rle.read_bytes()[5:])  # the 128-byte preamble is free: still a DICOM
    with DecodeSandbox(1, reader=abort_on_crash_marker) as sandbox:
        assert sandbox.read_file(png).size == (40, 48) and sandbox.read_file(tmp_path / "plain.dcm").size == (40, 48)
        assert sandbox._pool is None  # no child for a PNG nor for uncompressed DICOM (NumPy unpacks it)
        got = sandbox.read_file(rle, target_size=32)
        assert sandbox._pool is not None  # compressed: decoded in a child
        np.testing.assert_array_equal(got.pixels, read_xray(rle, target_size=32).pixels)
        with pytest.raises(DecoderCrashed, match=f"^{crashing}: the DICOM decoder crashed on this file"):
            sandbox.read_file(crashing)
        assert sandbox.crashes == 2 and sandbox.read_file(str(rle)).size == (40, 48)
        with pytest.raises(DecoderCrashed, match="^upload: the DICOM decoder crashed"):  # the bytes of a file too
            sandbox.read_file(crashing.read_bytes())
        assert sandbox.crashes == 4 and sandbox.read_file(png.read_bytes()).size == (40, 48)
        with pytest.raises(ImageReadError, match="missing.dcm"):  # not a regular file: read_xray says why, here
            sandbox.read_file(tmp_path / "missing.dcm")
    assert sandbox._pool is None  # closed on leaving the block


def test_native_decoder_reads_the_transfer_syntax_and_doubts_a_damaged_meta(tmp_path: Path, dicom: bytes) -> None:
    (tmp_path / "plain.dcm").write_bytes(dicom)
    assert not native_decoder(tmp_path / "plain.dcm") and native_decoder(rle_dicom(tmp_path / "rle.dcm", PIXELS))
    assert all(native_decoder(p) for p in CRASHERS)
    (tmp_path / "damaged.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    assert native_decoder(tmp_path / "damaged.dcm")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_read_file_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    with DecodeSandbox(1) as sandbox, pytest.raises(ImageReadError, match="FIFO"):
        sandbox.read_file(fifo)


def test_real_files_that_crashed_gdcm_are_one_error_each() -> None:
    with DecodeSandbox(1) as sandbox:
        for path in CRASHERS:
            with pytest.raises(DecoderCrashed, match=f"^{path}: the DICOM decoder crashed"):
                sandbox.read_file(path)
