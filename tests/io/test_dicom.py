"""DICOM reading: LUT pipeline, MONOCHROME1, metadata privacy, hostile files, real CR files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import BasicTextSRStorage, RLELossless

from xrayfm import ImageReadError, UnsafeInputError
from xrayfm.io import ReadLimits, read_xray, window_to_unit
from xrayfm.io.reader import probe_image
from xrayfm.io.writers import write_dicom


def test_monochrome1_is_inverted_to_bright_dense(tmp_path: Path, gradient_image: np.ndarray) -> None:
    m2 = read_xray(write_dicom(tmp_path / "m2.dcm", gradient_image, photometric="MONOCHROME2"), voi="none")
    m1 = read_xray(write_dicom(tmp_path / "m1.dcm", gradient_image, photometric="MONOCHROME1"), voi="none")
    assert m1.meta["inverted"] and not m2.meta["inverted"]
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-3)
    np.testing.assert_allclose(m2.pixels, gradient_image, atol=1e-3)


def test_window_is_applied(tmp_path: Path, gradient_image: np.ndarray) -> None:
    # 12-bit data; a window over the lower half of the range saturates the bright disc
    path = write_dicom(tmp_path / "w.dcm", gradient_image, bits_stored=12, window=(1024, 2048))
    img = read_xray(path)
    assert img.meta["voi"].startswith("window 1024/2048")
    stored = np.round(gradient_image * 4095)
    expected = np.clip((stored - 1023.5) / 2047 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)


def test_rescale_slope_intercept_applied_before_window(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "r.dcm", gradient_image, bits_stored=12, rescale=(2.0, -1000.0), window=(3095, 8190))
    img = read_xray(path)
    modality = np.round(gradient_image * 4095) * 2.0 - 1000.0
    expected = np.clip((modality - 3094.5) / 8189 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)


def test_window_functions() -> None:
    x = np.array([0.0, 50.0, 100.0])
    # PS3.3 C.11.2.1.2: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to the output range
    np.testing.assert_allclose(window_to_unit(x, 50, 101), [0.005, 0.505, 1.0], atol=1e-6)
    sig = window_to_unit(x, 50, 100, "SIGMOID")
    np.testing.assert_allclose(sig, [1 / (1 + np.exp(2)), 0.5, 1 / (1 + np.exp(-2))], atol=1e-6)
    np.testing.assert_allclose(window_to_unit(x, 50, 100, "LINEAR_EXACT"), [0.0, 0.5, 1.0])


def test_voi_lut_sequence(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "l.dcm", gradient_image, bits_stored=8)
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [256, 0, 8])
    item.add_new("LUTData", "US", [255 - i for i in range(256)])  # an inverting LUT
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(path)
    img = read_xray(path)
    assert img.meta["voi"] == "voi_lut_sequence"
    np.testing.assert_allclose(img.pixels, 1 - np.round(gradient_image * 255) / 255, atol=1e-6)


def test_metadata_keeps_no_patient_identifiers(tmp_path: Path, gradient_image: np.ndarray) -> None:
    tags = {"PatientName": "Doe^Jane", "PatientID": "MRN123", "PatientBirthDate": "19600101", "ViewPosition": "PA"}
    path = write_dicom(tmp_path / "p.dcm", gradient_image, tags=tags)
    meta = read_xray(path).meta
    assert meta["ViewPosition"] == "PA"
    text = repr(meta)
    assert "Doe" not in text and "MRN123" not in text and "1960" not in text


def test_rle_lossless_decodes_to_the_uncompressed_pixels(tmp_path: Path, gradient_image: np.ndarray) -> None:
    """RLE Lossless is decoded by pydicom's own pure-Python plugin."""
    plain = write_dicom(tmp_path / "plain.dcm", gradient_image, bits_stored=12)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    rle = read_xray(tmp_path / "rle.dcm")
    assert rle.meta["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(rle.pixels, read_xray(plain).pixels)


def test_no_extension_dicom_is_accepted(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "1.2.840.113619.2", gradient_image)
    assert read_xray(path).pixels.shape == (48, 64)


# ---- hostile and broken DICOM ----------------------------------------------------------------


def test_dicom_without_pixel_data(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "n.dcm", gradient_image)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(
        ImageReadError, match=r"no pixel data: 6,144 bytes expected \(64x48, 16 bits allocated\), 0 present"
    ):
        read_xray(path)


def test_report_without_pixel_data_is_not_called_truncated(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "sr.dcm", gradient_image)
    ds = pydicom.dcmread(path)
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"has no pixel data \(e.g. a report"):
        read_xray(path)


def test_truncated_pixel_data(tmp_path: Path, gradient_image: np.ndarray) -> None:
    data = write_dicom(tmp_path / "t.dcm", gradient_image).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-1500])
    with pytest.raises(
        ImageReadError,
        match=r"truncated: 6,144 bytes of pixel data expected \(64x48, 16 bits allocated\), 4,644 present$",
    ):
        read_xray(tmp_path / "cut.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom's own note on the cut
def test_truncated_compressed_pixel_data(tmp_path: Path, gradient_image: np.ndarray) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", gradient_image))
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    data = (tmp_path / "rle.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 100])
    with pytest.raises(
        ImageReadError, match=f"Secondary Capture Image Storage file of {len(data) - 100:,} bytes: it is truncated"
    ):
        read_xray(tmp_path / "cut.dcm")


def test_multiframe_refused(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "mf.dcm", gradient_image)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="multi-frame"):
        read_xray(path)


def test_huge_declared_dicom_refused(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_dicom(tmp_path / "big.dcm", gradient_image)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)
    with pytest.raises(UnsafeInputError, match="60000x60000"):
        read_xray(path)


def test_dicm_marker_with_garbage_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "g.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(2000))
    with pytest.raises(ImageReadError):
        read_xray(tmp_path / "g.dcm")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the mangled UIDs
@pytest.mark.parametrize("seed", range(15))
def test_mutated_dicom_never_crashes(tmp_path: Path, gradient_image: np.ndarray, seed: int) -> None:
    data = bytearray(write_dicom(tmp_path / "a.dcm", gradient_image, window=(2048, 4096)).read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(132, len(data), size=6):
        data[pos] = int(rng.integers(0, 256))
    (tmp_path / "m.dcm").write_bytes(bytes(data))
    try:
        img = read_xray(tmp_path / "m.dcm", limits=ReadLimits(max_pixels=10_000_000))
    except ImageReadError:
        return
    assert np.isfinite(img.pixels).all() and 0 <= img.pixels.min() and img.pixels.max() <= 1


# ---- real computed-radiography files (shared/datasets/dicom_cr_samples) ----------------------


@pytest.fixture(scope="module")
def cr_samples(shared_datasets: Path) -> tuple[Path, pd.DataFrame]:
    root = shared_datasets / "dicom_cr_samples"
    return root, pd.read_csv(root / "labels.csv")


def with_vr(data: bytes, tag: bytes, vr: bytes) -> bytes:
    """``data`` (explicit VR little endian) with the value representation of element ``tag`` replaced."""
    at = data.index(tag)
    return data[: at + 4] + vr + data[at + 6 :]


def test_damaged_value_representation_of_the_pixels_is_refused_by_name(
    tmp_path: Path, gradient_image: np.ndarray
) -> None:
    """A fuzzed upload once reached the server as a 500: PixelData's VR read as 'ON', which pydicom
    cannot convert (NotImplementedError when first used)."""
    data = write_dicom(tmp_path / "a.dcm", gradient_image).read_bytes()
    with pytest.raises(ImageReadError, match="corrupt DICOM pixel data element"):
        read_xray(with_vr(data, b"\xe0\x7f\x10\x00", b"ON"), target_size=32)


def test_damaged_header_elements_the_reader_consults_are_refused_by_name(
    tmp_path: Path, gradient_image: np.ndarray
) -> None:
    """Damaged value representations found by fuzzing uploads (each was a 500): a transfer syntax read
    as plain text instead of a UID, and, unconvertible by pydicom, BitsAllocated while probing and the
    SOP class of a file without pixel data."""
    data = write_dicom(tmp_path / "a.dcm", gradient_image).read_bytes()
    syntax = with_vr(data, b"\x02\x00\x10\x00", b"LO")  # (0002,0010) TransferSyntaxUID as a long string
    np.testing.assert_allclose(read_xray(syntax).pixels, read_xray(data).pixels)
    with pytest.raises(ImageReadError, match="BitsAllocated is invalid"):
        probe_image(with_vr(data, b"\x28\x00\x00\x01", b"ON"), name="upload")  # (0028,0100)
    stripped = data[: data.index(b"\xe0\x7f\x10\x00")]  # no pixel data, and a damaged SOP class
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_xray(with_vr(stripped, b"\x02\x00\x02\x00", b"ON"))  # (0002,0002) MediaStorageSOPClassUID


def test_damaged_descriptive_element_costs_only_its_metadata(tmp_path: Path, gradient_image: np.ndarray) -> None:
    data = write_dicom(tmp_path / "a.dcm", gradient_image).read_bytes()
    assert read_xray(data).meta["Modality"] == "CR"
    img = read_xray(with_vr(data, b"\x08\x00\x60\x00", b"ON"))  # (0008,0060) Modality
    assert "Modality" not in img.meta and img.meta["PhotometricInterpretation"] == "MONOCHROME2"
    np.testing.assert_allclose(img.pixels, read_xray(data).pixels)


def test_real_cr_raw_pixels_match_published_hash(cr_samples: tuple[Path, pd.DataFrame]) -> None:
    root, table = cr_samples
    for row in table.itertuples():
        ds = pydicom.dcmread(root / row.image)
        raw = ds.pixel_array.astype("<u2")
        assert hashlib.sha256(raw.tobytes()).hexdigest()[:16] == row.pixel_sha256, row.image


def test_real_cr_decoded_by_xrayfm(cr_samples: tuple[Path, pd.DataFrame]) -> None:
    root, table = cr_samples
    decoded = {}
    for row in table.itertuples():
        img = read_xray(root / row.image)
        assert img.pixels.shape == (row.rows, row.columns)
        assert img.meta["inverted"] is True  # all four are MONOCHROME1
        assert img.meta["voi"].startswith(f"window {row.window_center:g}/{row.window_width:g}")
        assert img.meta["BodyPartExamined"] == row.body_part
        assert 0 <= img.pixels.min() and img.pixels.max() <= 1
        decoded[row.image] = img.pixels
    # JPEG 2000 lossless decodes to exactly the uncompressed pixels
    for name in ("RG1", "RG3"):
        np.testing.assert_array_equal(decoded[f"dicom/{name}_J2KR.dcm"], decoded[f"dicom/{name}_UNCR.dcm"])


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom's own note on the cut
@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KR.dcm"])
def test_real_cr_cut_short_is_called_truncated(
    cr_samples: tuple[Path, pd.DataFrame], tmp_path: Path, name: str
) -> None:
    root, _ = cr_samples
    (tmp_path / name).write_bytes((root / "dicom" / name).read_bytes()[:400_000])
    with pytest.raises(ImageReadError, match="truncated") as err:
        read_xray(tmp_path / name)
    if name.endswith("UNCR.dcm"):  # uncompressed: the declared size says how much is missing
        assert "6,195,200 bytes of pixel data expected (1760x1760, 16 bits allocated)" in str(err.value)


def test_real_chest_cr_looks_like_a_chest(cr_samples: tuple[Path, pd.DataFrame]) -> None:
    """After MONOCHROME1 inversion the spine (centre column) is brighter than the lungs."""
    root, _ = cr_samples
    px = read_xray(root / "dicom/RG1_UNCR.dcm").pixels
    h, w = px.shape
    spine = px[h // 3 : 2 * h // 3, w // 2 - w // 40 : w // 2 + w // 40].mean()
    lung = px[h // 3 : h // 2, w // 5 : w // 3].mean()
    assert spine > lung + 0.05
