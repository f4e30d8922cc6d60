"""Compressed DICOM as archives hold it: each transfer syntax decoded exactly (or within its loss),
JPEG 2000 at a reduced resolution level, and decode failures reported as one line.

Files are written from known 12-/16-bit arrays by real encoders: pydicom's own (RLE, JPEG-LS
through CharLS, JPEG 2000 through OpenJPEG) and libjpeg-turbo through imagecodecs for JPEG
Lossless SV1 and 12-bit JPEG Extended, which pydicom cannot encode.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from xrayfm import ImageReadError, XrayfmError
from xrayfm.io import read_xray
from xrayfm.io.images import J2kHeader, decode_j2k, j2k_header, j2k_reduction
from xrayfm.io.writers import write_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in pydicom's wheel


def stored_array(bits: int, shape: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise over the whole ``bits`` range, as unsigned stored values."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    unit = 0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + np.random.default_rng(seed).normal(0, 0.02, shape)
    arr = np.round(np.clip(unit, 0, 1) * (2**bits - 1))
    arr[0, 0], arr[-1, -1] = 0, 2**bits - 1
    return arr.astype(np.uint16)


def write_plain(path: Path, stored: np.ndarray, bits: int) -> Path:
    """Uncompressed DICOM of ``stored`` with a LINEAR_EXACT window that maps value v to v / (2**bits - 1)."""
    top = 2**bits - 1
    return write_dicom(
        path, stored / top, bits_stored=bits, window=(top / 2, top), tags={"VOILUTFunction": "LINEAR_EXACT"}
    )


def stored_back(path: Path, bits: int, **options: object) -> np.ndarray:
    """The stored values xrayfm decodes, read back through the exact window of :func:`write_plain`."""
    return np.rint(read_xray(path, **options).pixels.astype(np.float64) * (2**bits - 1)).astype(np.int64)


def _jpeg_markers(stream: bytes) -> dict[int, bytes]:
    """Marker -> segment body of a JPEG stream's header (up to and including SOS)."""
    markers, pos = {}, 2
    while pos + 4 <= len(stream):
        marker, length = int.from_bytes(stream[pos : pos + 2], "big"), int.from_bytes(stream[pos + 2 : pos + 4], "big")
        markers[marker] = stream[pos + 4 : pos + 2 + length]
        if marker == 0xFFDA:
            break
        pos += 2 + length
    return markers


def libjpeg_turbo_stream(stored: np.ndarray, bits: int, syntax: UID) -> bytes:
    """A real JPEG Lossless SV1 or 12-bit JPEG Extended bit-stream of ``stored`` from libjpeg-turbo."""
    if syntax == JPEGLosslessSV1:
        stream = imagecodecs.jpeg8_encode(stored, lossless=True, predictor=1, bitspersample=bits)
        markers = _jpeg_markers(stream)
        sos = markers[0xFFDA]
        assert 0xFFC3 in markers and sos[1 + 2 * sos[0]] == 1, "not a process-14 selection-value-1 stream"
    else:
        stream = imagecodecs.jpeg8_encode(stored, level=90, bitspersample=bits)
        assert _jpeg_markers(stream)[0xFFC1][0] == 12, "not a 12-bit extended sequential (SOF1) stream"
    return stream


def write_compressed(plain: Path, out: Path, syntax: UID, **options: object) -> Path:
    """``plain`` re-encoded in ``syntax``."""
    ds = pydicom.dcmread(plain)
    if syntax in (JPEGLosslessSV1, JPEGExtended12Bit):
        ds.PixelData = encapsulate([libjpeg_turbo_stream(ds.pixel_array, int(ds.BitsStored), syntax)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.compress(syntax, **options)
    ds.save_as(out)
    return out


# (syntax, bits stored, encoder options, largest error allowed in stored units, lowest PSNR allowed in dB)
CASES = [
    pytest.param(RLELossless, 12, {}, 0, None, id="rle-12"),
    pytest.param(RLELossless, 16, {}, 0, None, id="rle-16"),
    pytest.param(JPEGLosslessSV1, 12, {}, 0, None, id="jpeg-lossless-sv1-12"),
    pytest.param(JPEGLosslessSV1, 16, {}, 0, None, id="jpeg-lossless-sv1-16"),
    pytest.param(JPEGExtended12Bit, 12, {}, None, 55, id="jpeg-extended-12"),  # quality 90
    pytest.param(JPEGLSLossless, 12, {}, 0, None, id="jpeg-ls-12"),
    pytest.param(JPEGLSLossless, 16, {}, 0, None, id="jpeg-ls-16"),
    pytest.param(JPEGLSNearLossless, 12, {"jls_error": 3}, 3, None, id="jpeg-ls-near-lossless-12"),
    pytest.param(JPEG2000Lossless, 12, {}, 0, None, id="j2k-lossless-12"),
    pytest.param(JPEG2000Lossless, 16, {}, 0, None, id="j2k-lossless-16"),
    pytest.param(JPEG2000, 12, {"j2k_psnr": [50]}, None, 49, id="j2k-lossy-12"),
]


@pytest.mark.parametrize(("syntax", "bits", "options", "max_error", "min_psnr"), CASES)
def test_each_transfer_syntax_decodes_to_the_source_array(
    tmp_path: Path, syntax: UID, bits: int, options: dict, max_error: int | None, min_psnr: float | None
) -> None:
    source = stored_array(bits)
    plain = write_plain(tmp_path / "plain.dcm", source, bits)
    assert np.array_equal(stored_back(plain, bits), source)  # the exact read-back holds uncompressed
    path = write_compressed(plain, tmp_path / "c.dcm", syntax, **options)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    img = read_xray(path)
    assert img.meta["transfer_syntax"] == syntax.name and img.meta["downscale"] == 1
    error = stored_back(path, bits) - source.astype(np.int64)
    if max_error is not None:
        assert np.abs(error).max() <= max_error
    if min_psnr is not None:  # lossy: something was lost, within what the encoder was asked for
        assert np.abs(error).max() > 0
        assert 20 * np.log10((2**bits - 1) / np.sqrt(np.mean(error.astype(np.float64) ** 2))) >= min_psnr


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless])
def test_real_cr_pixels_survive_each_lossless_syntax(shared_datasets: Path, tmp_path: Path, syntax: UID) -> None:
    """A 512 px crop of the real 15-bit MONOCHROME1 chest CR, re-encoded, reads back identical."""
    ds = pydicom.dcmread(shared_datasets / "dicom_cr_samples/dicom/RG1_UNCR.dcm")
    crop = np.ascontiguousarray(ds.pixel_array[600:1112, 600:1112])
    ds.PixelData, ds.Rows, ds.Columns = crop.tobytes(), 512, 512
    ds.save_as(tmp_path / "plain.dcm")
    path = write_compressed(tmp_path / "plain.dcm", tmp_path / "c.dcm", syntax)
    img = read_xray(path)
    assert img.meta["inverted"] and img.meta["bit_depth"] == 15
    np.testing.assert_array_equal(img.pixels, read_xray(tmp_path / "plain.dcm").pixels)


# ---- JPEG 2000 at a reduced resolution -------------------------------------------------------


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    h, w = (s // factor * factor for s in pixels.shape)
    return pixels[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_real_j2k_cr_read_for_512_px_covers_it_at_half_size(shared_datasets: Path, name: str) -> None:
    root = shared_datasets / "dicom_cr_samples/dicom"
    full = read_xray(root / f"{name}_UNCR.dcm").pixels
    img = read_xray(root / f"{name}_J2KR.dcm", target_size=512)
    assert min(img.pixels.shape) >= 512 and img.meta["downscale"] == 2
    assert img.pixels.shape == tuple(-(-s // 2) for s in full.shape)  # ceil: the standard's reduced size
    assert img.meta["original_size"] == [full.shape[1], full.shape[0]]
    expected = block_mean(full, 2)
    diff = np.abs(img.pixels[: expected.shape[0], : expected.shape[1]] - expected)
    assert diff.mean() < 0.005 and np.corrcoef(img.pixels[: expected.shape[0], : expected.shape[1]].ravel(),
                                                expected.ravel())[0, 1] > 0.999  # fmt: skip


@pytest.mark.parametrize(
    ("target", "shape", "downscale"),
    [(200, (151, 203), 1), (64, (76, 102), 2), (30, (38, 51), 4), (15, (19, 26), 8)],
)
def test_reduced_j2k_is_the_coarsest_level_covering_the_target(
    tmp_path: Path, target: int, shape: tuple[int, int], downscale: int
) -> None:
    # 203 x 151 px: level 1/8 (26 x 19) would cover 15 px, but Pillow sizes it 25 px wide (half-up,
    # where OpenJPEG rounds up) and refuses the stream, so 15 px is decoded at 1/4, then box-averaged by 2
    source = stored_array(16, shape=(151, 203))
    path = write_compressed(write_plain(tmp_path / "p.dcm", source, 16), tmp_path / "j.dcm", JPEG2000Lossless)
    img = read_xray(path, target_size=target)
    assert img.pixels.shape == shape and img.meta["downscale"] == downscale
    assert min(img.pixels.shape) >= min(target, 151)  # never below the target, nor above full size
    assert read_xray(path).pixels.shape == (151, 203)  # no target: full resolution


def test_reduction_level_skips_sizes_pillow_would_refuse() -> None:
    chest = J2kHeader(width=1841, height=1955, origin=(0, 0), precision=15, signed=False, components=1, levels=5)
    assert chest.reduced_size(2) == (461, 489)
    assert j2k_reduction(chest, 400) == 1  # Pillow would size 1/4 as 460 px wide and refuse the stream
    knee = J2kHeader(width=1760, height=1760, origin=(0, 0), precision=10, signed=False, components=1, levels=5)
    assert [j2k_reduction(knee, t) for t in (2000, 1760, 512, 440, 100, 1)] == [0, 0, 1, 2, 4, 5]


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "JPEG2000.dcm", "693_J2KI.dcm"])
def test_j2k_from_other_encoders_signed_and_lossy(name: str) -> None:
    """Signed and lossy codestreams of other encoders: at full size the reduced-path decoder gives
    pydicom's values; the half-size read is the same picture."""
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    np.testing.assert_array_equal(decode_j2k(frame, j2k_header(frame), 0), ds.pixel_array)
    full = read_xray(PYDICOM_FILES / name).pixels
    half = read_xray(PYDICOM_FILES / name, target_size=min(full.shape) // 2)
    assert half.meta["downscale"] == 2
    assert np.corrcoef(half.pixels.ravel(), block_mean(full, 2).ravel())[0, 1] > 0.95


def test_j2k_signed_unlike_its_dataset_is_decoded_at_full_size() -> None:
    """A codestream coded unsigned for signed data (pydicom's J2K_pixelrep_mismatch.dcm): its coarser
    levels average bit patterns across the sign wrap, so the full image is decoded, then box-averaged."""
    path = PYDICOM_FILES / "J2K_pixelrep_mismatch.dcm"
    img = read_xray(path, target_size=64)
    assert img.meta["downscale"] == 8
    np.testing.assert_allclose(img.pixels, block_mean(read_xray(path).pixels, 8), atol=1e-6)


def test_target_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(XrayfmError, match="target_size must be a positive number of pixels, not 0"):
        read_xray(write_plain(tmp_path / "p.dcm", stored_array(12), 12), target_size=0)


# ---- failures: one line, nothing logged with a traceback ---------------------------------------


@contextmanager
def logging_to_stderr() -> Iterator[None]:
    """Root logging to stderr at DEBUG, as an application (or ``logging.basicConfig``) sets it up.

    Entered inside a test, so the handler writes to the ``sys.stderr`` that ``capfd`` captures."""
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless])
def test_undecodable_pixel_data_is_one_line_without_tracebacks(
    tmp_path: Path, syntax: UID, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ds = pydicom.dcmread(write_plain(tmp_path / "p.dcm", stored_array(12), 12))
    ds.PixelData = encapsulate([bytes(range(256)) * 4])  # no codec's stream
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(tmp_path / "bad.dcm")
    with logging_to_stderr(), caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError) as err:
        read_xray(tmp_path / "bad.dcm")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'bad.dcm'}: cannot decode pixel data ({syntax.name} ({syntax}))")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


def test_no_plugin_installed_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = write_plain(tmp_path / "p.dcm", stored_array(12), 12)
    path = write_compressed(plain, tmp_path / "ll.dcm", JPEGLosslessSV1)
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})
    with pytest.raises(ImageReadError) as err:
        read_xray(path)
    assert str(err.value) == (
        f"{path}: no decoder plugin is installed for {JPEGLosslessSV1.name} ({JPEGLosslessSV1}): "
        "pip install python-gdcm (an xrayfm dependency)"
    )


def test_12_bit_jpeg_extended_without_libjpeg_names_the_gpl_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_compressed(
        write_plain(tmp_path / "p.dcm", stored_array(12), 12), tmp_path / "e.dcm", JPEGExtended12Bit
    )
    decoder = get_decoder(JPEGExtended12Bit)
    others = {name: fn for name, fn in decoder._available.items() if name != "pylibjpeg"}
    monkeypatch.setattr(decoder, "_available", others)  # GDCM and Pillow stay: both refuse 12 bits
    with pytest.raises(ImageReadError, match=r"12-bit JPEG Extended .*: pip install 'xrayfm\[gpl-codecs\]'"):
        read_xray(path)


def test_12_bit_jpeg_extended_decodes_without_gdcm_refusal_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom tries GDCM first, which refuses 12 bits, and logs that at ERROR with a traceback
    before pylibjpeg decodes the file; xrayfm keeps it to one DEBUG line of its own."""
    path = write_compressed(
        write_plain(tmp_path / "p.dcm", stored_array(12), 12), tmp_path / "e.dcm", JPEGExtended12Bit
    )
    with logging_to_stderr(), caplog.at_level(logging.DEBUG, logger="xrayfm.io.dicom"):
        read_xray(path)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    notes = [r.getMessage() for r in caplog.records if r.name == "xrayfm.io.dicom"]
    assert any("GDCM does not support 'JPEG Extended'" in note and "\n" not in note for note in notes)
    err = capfd.readouterr().err
    assert "GDCM does not support" in err and "Traceback" not in err  # the DEBUG line, alone


@pytest.mark.parametrize("target_size", [None, 32])
def test_j2k_frame_larger_than_the_dataset_says_is_refused_before_decoding(tmp_path: Path, target_size) -> None:
    """Rows and Columns pass the read limits, but the codestream declares its own size, which the decoder
    would allocate: a frame that is not the image described is refused before any decoder runs."""
    plain = write_plain(tmp_path / "p.dcm", stored_array(12), 12)
    ds = pydicom.dcmread(write_compressed(plain, tmp_path / "c.dcm", JPEG2000Lossless))
    ds.Rows, ds.Columns = 48, 64  # the codestream holds 96 x 128
    ds.save_as(tmp_path / "lying.dcm")
    with pytest.raises(ImageReadError, match="codestream declares 128x96 pixels, the dataset 64x48"):
        read_xray(tmp_path / "lying.dcm", target_size=target_size)


class PanicException(BaseException):
    """What a Rust decoder raises through pyo3 when it panics (pylibjpeg-rle did on a fuzzed RLE stream):
    a BaseException, which ``except Exception`` lets through."""


def test_a_decoder_panic_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_compressed(write_plain(tmp_path / "p.dcm", stored_array(12), 12), tmp_path / "c.dcm", RLELossless)

    def panic(_: pydicom.Dataset) -> np.ndarray:
        raise PanicException("index out of bounds: the len is 24576 but the index is 24577")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(panic))
    with pytest.raises(ImageReadError, match="cannot decode pixel data .*index out of bounds"):
        read_xray(path)
