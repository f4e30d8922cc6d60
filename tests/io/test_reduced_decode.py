"""Reading from bytes and reduced decoding (``target_size``): the same pixels as from a path, the
full-size image box-averaged, no full-size float copy of a 100 MP upload, and one-line errors."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import JPEG2000Lossless, RLELossless

from xrayfm import ImageReadError, UnsafeInputError
from xrayfm.io import ImageProbe, ReadLimits, probe_image, read_xray
from xrayfm.io.images import box_mean
from xrayfm.io.writers import write_dicom

SHAPE = (151, 203)  # neither side a multiple of 2, 3 or 4: every reduction has cut blocks at the edges


def xray_like(shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """Smooth structure, a sharp-edged disc and noise over the whole [0, 1] range."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.35 * np.sin(xx / 11.0) * np.cos(yy / 7.0) + np.random.default_rng(seed).normal(0, 0.03, shape)
    img[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (h // 5) ** 2] = 0.97
    img[0, 0], img[-1, -1] = 0.0, 1.0
    return np.clip(img, 0, 1).astype(np.float32)


def pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def to_int(img: np.ndarray, bits: int) -> np.ndarray:
    return np.round(img * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def dicom_bytes(tmp_path: Path, img: np.ndarray, syntax: pydicom.uid.UID | None = None, **options: object) -> bytes:
    """An uncompressed 12-bit DICOM of ``img`` (``write_dicom`` options), re-encoded in ``syntax`` if given."""
    path = write_dicom(tmp_path / "plain.dcm", img, **options)
    if syntax is not None:
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    return path.read_bytes()


def reference_box_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each block, cut blocks at the edges over the pixels they hold: written out block by block."""
    h, w = arr.shape
    out = np.empty((-(-h // factor), -(-w // factor)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = arr[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].astype(np.float64).mean()
    return out


# name -> (suffix, maker of the file's bytes from a [0, 1] image and tmp_path)
MAKERS: dict[str, tuple[str, Callable[[np.ndarray, Path], bytes]]] = {
    "png8": (".png", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 8)), "PNG")),
    "png16": (".png", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 16)), "PNG")),
    "png-rgb": (".png", lambda a, _: pil_bytes(Image.fromarray(np.stack([to_int(a, 8)] * 3, -1)), "PNG")),
    "jpeg": (".jpg", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 8)), "JPEG", quality=90)),
    "tiff16": (".tif", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 16)), "TIFF")),
    "tiff-int32": (".tif", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 16).astype(np.int32)), "TIFF")),
    "tiff-float": (".tif", lambda a, _: pil_bytes(Image.fromarray(a * 3000 - 1000), "TIFF")),
    "bmp": (".bmp", lambda a, _: pil_bytes(Image.fromarray(to_int(a, 8)), "BMP")),
    "dicom": (".dcm", lambda a, tmp: dicom_bytes(tmp, a, window=(1500, 2500))),
    "dicom-rle": (".dcm", lambda a, tmp: dicom_bytes(tmp, a, RLELossless, window=(1500, 2500))),
    "dicom-j2k": (".dcm", lambda a, tmp: dicom_bytes(tmp, a, JPEG2000Lossless, photometric="MONOCHROME1")),
}


@pytest.mark.parametrize("target_size", [None, 40])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_bytes_read_like_the_file(tmp_path: Path, kind: str, target_size: int | None) -> None:
    suffix, make = MAKERS[kind]
    data = make(xray_like(), tmp_path)
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    from_file = read_xray(path, target_size=target_size)
    for source in (data, bytearray(data), memoryview(data)):
        from_bytes = read_xray(source, target_size=target_size)
        np.testing.assert_array_equal(from_bytes.pixels, from_file.pixels)
        assert from_bytes.meta == {k: v for k, v in from_file.meta.items() if k != "path"}
    assert from_file.meta["path"] == str(path) and from_file.meta["original_size"] == [SHAPE[1], SHAPE[0]]


# name -> largest difference allowed between the reduced read and the full read box-averaged, and why
AGREEMENT = {
    # Pillow's reduce gives each 8-bit block mean as an integer, by a fixed-point division that can
    # round the wrong way: under one grey level (measured 0.56 inside, 0.67 in cut edge blocks)
    "png8": 1 / 255,
    "png-rgb": 1 / 255,
    "bmp": 1 / 255,
    "tiff-int32": 0.5 / 65535,  # 32-bit integer images: rounded to the nearest integer
    "png16": 1e-6,  # 16-bit images are averaged by numpy in float64: float32 rounding only
    "tiff16": 1e-6,
    "tiff-float": 1e-6,
    "dicom": 1e-6,  # windowed band by band at full size, then averaged
    "dicom-rle": 1e-6,
    "jpeg": 1 / 255,  # min-max: decoded at full size (the range must be the full image's), as PNG
}
#: JPEG read for a model (intensity "dtype") is first decoded at 1/2, 1/4 or 1/8 by libjpeg's scaled
#: IDCT: the low-pass of the DCT coefficients, not exactly the mean of the clamped, rounded full-size
#: pixels. Measured on this image at quality 90: within 1.25 grey levels where the 8 px blocks lie
#: inside the image, 0.27 to 0.47 on average; a last row or column whose block the encoder padded
#: (151 and 203 px are not multiples of 8) averages the padding in too (up to 13 levels).
JPEG_DCT_INSIDE, JPEG_DCT_MEAN = 2 / 255, 0.5 / 255


@pytest.mark.parametrize("intensity", ["dtype", "minmax"])
@pytest.mark.parametrize("target_size", [75, 40, 18])
@pytest.mark.parametrize("kind", list(AGREEMENT))
def test_reduced_read_is_the_full_read_box_averaged(
    tmp_path: Path, kind: str, target_size: int, intensity: str
) -> None:
    data = MAKERS[kind][1](xray_like(), tmp_path)
    full = read_xray(data, intensity=intensity)
    reduced = read_xray(data, intensity=intensity, target_size=target_size)
    factor, expected_factor = reduced.meta["downscale"], min(SHAPE) // target_size
    dct_scaled = kind == "jpeg" and intensity == "dtype"
    if dct_scaled:  # 1/2, 1/4 or 1/8 by DCT scaling, then a box mean of what that leaves
        dct = max(s for s in (1, 2, 4, 8) if s <= expected_factor)
        expected_factor = dct * (-(-min(SHAPE) // dct) // target_size)
    assert factor == expected_factor
    assert reduced.pixels.shape == tuple(-(-s // factor) for s in SHAPE)
    assert min(reduced.pixels.shape) >= target_size and reduced.pixels.dtype == np.float32
    assert reduced.meta["original_size"] == full.meta["original_size"] == [SHAPE[1], SHAPE[0]]
    assert {k: v for k, v in reduced.meta.items() if k != "downscale"} == {
        k: v for k, v in full.meta.items() if k != "downscale"
    }
    difference = np.abs(reduced.pixels - reference_box_mean(full.pixels, factor))
    if dct_scaled:
        assert difference[:-1, :-1].max() <= JPEG_DCT_INSIDE and difference.mean() <= JPEG_DCT_MEAN
    else:
        assert difference.max() <= AGREEMENT[kind] + 1e-6


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"bits_stored": 12, "window": (1024, 2048)}, id="window-saturating"),
        pytest.param({"bits_stored": 12, "rescale": (2.0, -1000.0), "window": (3095, 8190)}, id="rescale-window"),
        pytest.param({"bits_stored": 16, "photometric": "MONOCHROME1"}, id="monochrome1-minmax"),
        pytest.param({"bits_stored": 12, "window": (2000, 600), "tags": {"VOILUTFunction": "SIGMOID"}}, id="sigmoid"),
        pytest.param({"bits_stored": 8, "voi_lut": True}, id="voi-lut-sequence"),
    ],
)
@pytest.mark.parametrize("voi", ["auto", "none"])
def test_reduced_dicom_keeps_the_display_pipeline(tmp_path: Path, options: dict, voi: str) -> None:
    """Windowing clips and VOI LUTs bend values: both are applied at full size before the box mean."""
    options = dict(options)
    path = write_dicom(tmp_path / "d.dcm", xray_like(), **{k: v for k, v in options.items() if k != "voi_lut"})
    if options.get("voi_lut"):
        ds = pydicom.dcmread(path)
        item = pydicom.Dataset()
        item.add_new("LUTDescriptor", "US", [256, 0, 8])
        item.add_new("LUTData", "US", [min(255, (i * i) // 128) for i in range(256)])  # a bending LUT
        ds.VOILUTSequence = pydicom.Sequence([item])
        ds.save_as(path)
    full = read_xray(path, voi=voi)
    reduced = read_xray(path, voi=voi, target_size=30)
    assert reduced.meta["downscale"] == 5 and reduced.meta["voi"] == full.meta["voi"]
    np.testing.assert_allclose(reduced.pixels, reference_box_mean(full.pixels, 5), atol=1e-6)
    # a box mean before windowing would differ where blocks straddle the window's ends
    if full.meta["voi"].startswith("window 1024/2048"):
        stored = np.round(xray_like() * 4095)
        windowed_mean = np.clip((reference_box_mean(stored, 5) - 1023.5) / 2047 + 0.5, 0, 1)
        assert np.abs(reduced.pixels - windowed_mean).max() > 0.01


def test_box_mean_matches_pillow_reduce() -> None:
    arr = to_int(xray_like(), 8)
    for factor in (1, 2, 3, 7, 151, 300):
        pillow = np.asarray(Image.fromarray(arr).reduce(factor), np.float64)
        np.testing.assert_allclose(box_mean(arr, factor), reference_box_mean(arr, factor))
        assert np.abs(box_mean(arr, factor) - pillow).max() < 1  # Pillow rounds to integers


def test_target_at_or_above_the_image_size_reads_full_size(tmp_path: Path) -> None:
    for kind in ("png8", "jpeg", "dicom"):
        data = MAKERS[kind][1](xray_like(), tmp_path)
        for target in (151, 152, 10_000):
            img = read_xray(data, target_size=target)
            assert img.meta["downscale"] == 1
            np.testing.assert_array_equal(img.pixels, read_xray(data).pixels)


def test_jpeg_exif_rotation_is_applied_after_a_reduced_decode() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    data = pil_bytes(Image.fromarray(to_int(xray_like((120, 320)), 8)), "JPEG", quality=95, exif=exif)
    full = read_xray(data)
    reduced = read_xray(data, target_size=30)
    assert full.pixels.shape == (320, 120) and reduced.meta["downscale"] == 4 and reduced.pixels.shape == (80, 30)
    assert reduced.meta["original_size"] == full.meta["original_size"] == [120, 320]
    assert np.abs(reduced.pixels - reference_box_mean(full.pixels, 4)).max() <= JPEG_DCT_INSIDE


# ---- errors: named after the upload, one line, refused by declared size before decoding ---------


def test_errors_name_the_upload_or_the_given_name(tmp_path: Path) -> None:
    garbage = np.random.default_rng(0).bytes(4096)
    with pytest.raises(ImageReadError) as err:
        read_xray(garbage)
    assert str(err.value) == ("upload: unrecognised content (not PNG, JPEG, TIFF, BMP or DICOM with 'DICM' marker)")
    with pytest.raises(ImageReadError, match=r"^chest\.png: unrecognised content"):
        read_xray(garbage, name="chest.png")
    with pytest.raises(ImageReadError, match=r"^upload: file is empty \(0 bytes\)$"):
        read_xray(b"")
    png = MAKERS["png8"][1](xray_like(), tmp_path)
    with pytest.raises(UnsafeInputError, match=r"^upload: file is 0\.0 MiB, above the limit of 0 MiB"):
        read_xray(memoryview(png), limits=ReadLimits(max_file_bytes=100))
    with pytest.raises(ImageReadError, match=r"^upload: declares 203x151 pixels, above the limit"):
        probe_image(png, limits=ReadLimits(max_pixels=1000))
    assert read_xray(png, name="scan.dcm", check_extension=True).meta["format"] == "PNG"  # no extension check


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")  # pydicom, on cut files
@pytest.mark.parametrize("target_size", [None, 40])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_cut_and_damaged_uploads_are_one_line_errors(tmp_path: Path, kind: str, target_size: int | None) -> None:
    data = MAKERS[kind][1](xray_like(), tmp_path)
    for cut in (data[: len(data) // 2], data[:-200]):
        with pytest.raises(ImageReadError) as err:
            read_xray(cut, target_size=target_size)
        assert str(err.value).startswith("upload: ") and "\n" not in str(err.value), str(err.value)
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    try:
        img = read_xray(damaged, target_size=target_size)
    except ImageReadError as exc:
        assert str(exc).startswith("upload: ") and "\n" not in str(exc), str(exc)
    else:  # zeroed bytes inside uncompressed or tolerant compressed data: a wrong but valid image
        assert np.isfinite(img.pixels).all() and 0 <= img.pixels.min() and img.pixels.max() <= 1


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny 8-bit grey PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def _dicom_declaring(tmp_path: Path, rows: int, columns: int) -> bytes:
    ds = pydicom.dcmread(write_dicom(tmp_path / "small.dcm", xray_like()))
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(tmp_path / "huge.dcm")
    return (tmp_path / "huge.dcm").read_bytes()


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_declared_oversize_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """12000 x 10000 px declared in a small file: above the 100 MP limit (under Pillow's own) and
    refused by probe and by read with no pixel decoded."""
    data = _png_declaring(12000, 10000) if kind == "png" else _dicom_declaring(tmp_path, 10000, 12000)
    assert len(data) < 100_000

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(no_decoding))
    for call in (probe_image, read_xray):
        with pytest.raises(UnsafeInputError) as err:
            call(data)
        assert str(err.value) == (
            "upload: declares 12000x10000 pixels, above the limit of 100,000,000 pixels / 32768 per side "
            "(possible decompression bomb; raise ReadLimits to allow it)"
        )


def test_probe_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = xray_like()
    cases = {
        "png8": ImageProbe("png", 203, 151, 8, 1),
        "png16": ImageProbe("png", 203, 151, 16, 1),
        "jpeg": ImageProbe("jpeg", 203, 151, 8, 1),
        "tiff16": ImageProbe("tiff", 203, 151, 16, 1),
        "bmp": ImageProbe("bmp", 203, 151, 8, 1),
        "dicom": ImageProbe("dicom", 203, 151, 16, 1),
        "dicom-j2k": ImageProbe("dicom", 203, 151, 16, 1),
    }
    frames = [Image.fromarray(to_int(img, 8)) for _ in range(3)]
    stack = pil_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    ds = pydicom.dcmread(io.BytesIO(MAKERS["dicom"][1](img, tmp_path)))
    ds.NumberOfFrames = 4
    ds.save_as(tmp_path / "multi.dcm")
    uploads = {kind: MAKERS[kind][1](img, tmp_path) for kind in cases}
    monkeypatch.setattr(Image.Image, "load", lambda *_: pytest.fail("pixels decoded"))
    for kind, expected in cases.items():
        data = uploads[kind]
        assert probe_image(data) == expected, kind
        assert probe_image(data[: len(data) * 2 // 3]) == expected, kind  # the pixel data is never read
    assert probe_image(stack).frames == 3 and probe_image(tmp_path / "multi.dcm").frames == 4
    assert probe_image(tmp_path / "multi.dcm").pixels == 203 * 151
    with pytest.raises(ImageReadError, match=r"^upload: DICOM image attributes missing or invalid"):
        probe_image(uploads["dicom"][:200])


# ---- memory: a 100 MP upload read for a 256 px model ----------------------------------------------

BIG = 9990  # the upload: 9990 x 9990 px (99.8 MP, under the 100 MP limit)


@pytest.fixture(scope="module")
def big_uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 9990 x 9990 px 8-bit PNG and JPEG of a mostly constant picture: small files, 95 MiB decoded."""
    image = Image.new("L", (BIG, BIG), 40)
    ImageDraw.Draw(image).ellipse((2000, 1500, 8000, 8500), fill=200)
    root = tmp_path_factory.mktemp("big")
    image.save(root / "big.png")
    image.save(root / "big.jpg", quality=90)
    return {"png": root / "big.png", "jpeg": root / "big.jpg"}


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_big_upload_reduced_without_a_full_size_array(big_uploads: dict[str, Path], kind: str) -> None:
    """numpy allocations are traced: a full decode holds a 95 MiB uint8 and a 381 MiB float32 copy;
    the reduced read holds the 257 px result (258 KiB) and its integer source, so 8 MiB is ample."""
    data = big_uploads[kind].read_bytes()
    tracemalloc.start()
    try:
        img = read_xray(data, target_size=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB traced"
    assert min(img.pixels.shape) >= 256 and img.meta["original_size"] == [BIG, BIG]
    assert img.meta["downscale"] == (39 if kind == "png" else 32)  # JPEG: 1/8 by DCT scaling, then 4
    centre = img.pixels[img.pixels.shape[0] // 2, img.pixels.shape[1] // 2]
    assert abs(centre - 200 / 255) < 2 / 255 and abs(img.pixels[0, 0] - 40 / 255) < 2 / 255


# VmHWM is the process's own peak; ru_maxrss would start from the parent's peak (kept across exec)
_RSS_SCRIPT = """
import sys
from pathlib import Path
from xrayfm.io import read_xray

def peak_rss():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
before = peak_rss()
read_xray(data, target_size=None if sys.argv[2] == "full" else int(sys.argv[2]))
print(peak_rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
@pytest.mark.parametrize(("kind", "bound_mib"), [("png", 160), ("jpeg", 40)])
def test_big_upload_peak_rss(big_uploads: dict[str, Path], kind: str, bound_mib: int) -> None:
    """Peak resident memory a read adds, in a fresh process: a PNG is inflated whole by Pillow (95 MiB
    outside Python's allocator), a JPEG is decoded at 1/8 (1.5 MiB); a full-size read adds ~950 MiB."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(big_uploads[kind]), "256"], capture_output=True, text=True, check=True
    )
    added = int(out.stdout.strip())
    assert added < bound_mib * 2**20, f"{added / 2**20:.0f} MiB added"
