"""PNG/JPEG reading: bit depths, colour reduction, intensity modes, hostile files."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrayfm import ImageReadError, UnsafeInputError
from xrayfm.io import ReadLimits, read_dicom, read_raster, read_xray, sniff_format
from xrayfm.io.reader import probe_image
from xrayfm.io.writers import write_png


def test_png8_roundtrip_exact(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_png(tmp_path / "a.png", gradient_image, bits=8)
    img = read_xray(path)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (48, 64)
    np.testing.assert_allclose(img.pixels, np.round(gradient_image * 255) / 255, atol=1e-6)
    assert img.meta["bit_depth"] == 8 and img.meta["format"] == "PNG"


def test_png16_keeps_precision(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_png(tmp_path / "a.png", gradient_image, bits=16)
    img = read_xray(path)
    assert img.meta["bit_depth"] == 16
    np.testing.assert_allclose(img.pixels, gradient_image, atol=1 / 65535)
    # 16-bit keeps distinctions that 8-bit would lose: a 1% ramp spans ~3 8-bit levels
    ramp = np.linspace(0.50, 0.51, 64 * 48, dtype=np.float32).reshape(48, 64)
    fine = read_xray(write_png(tmp_path / "ramp.png", ramp, bits=16)).pixels
    assert len(np.unique(fine)) > 600 and len(np.unique(np.round(ramp * 255))) <= 4


def test_minmax_intensity_stretches(tmp_path: Path) -> None:
    arr = np.full((8, 8), 0.2, np.float32)
    arr[0, 0] = 0.4
    path = write_png(tmp_path / "dim.png", arr, bits=16)
    img = read_xray(path, intensity="minmax")
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0


def test_rgb_xray_reduced_to_grey(tmp_path: Path, gradient_image: np.ndarray) -> None:
    grey = np.round(gradient_image * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1), "RGB").save(tmp_path / "rgb.png")
    img = read_xray(tmp_path / "rgb.png")
    np.testing.assert_allclose(img.pixels, grey / 255.0, atol=1 / 255)


def test_jpeg_read(tmp_path: Path, gradient_image: np.ndarray) -> None:
    Image.fromarray(np.round(gradient_image * 255).astype(np.uint8), "L").save(tmp_path / "a.jpg", quality=95)
    img = read_xray(tmp_path / "a.jpg")
    assert img.meta["format"] == "JPEG"
    assert np.abs(img.pixels - gradient_image).mean() < 0.02


def test_sniff_format() -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 10) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"II*\x00" + b"\0" * 124 + b"DICM") == "dicom"  # dual-personality file
    assert sniff_format(b"hello") is None


# ---- hostile and broken input: every case is a clear XrayfmError, never a crash -------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_xray(tmp_path / "nope.png")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_xray(tmp_path / "empty.png")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"not a regular file \(a directory\)"):
        read_xray(tmp_path)


def _error_within(seconds: float, read: Callable[[Path], object], path: Path) -> str:
    """The ImageReadError message of ``read(path)``; fails (instead of hanging) if it blocks."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read(path)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)  # a blocked open() cannot be interrupted
    worker.start()
    worker.join(seconds)
    assert outcome, f"reading {path} blocked for {seconds} s"
    assert isinstance(outcome[0], ImageReadError), outcome[0]
    return str(outcome[0])


@pytest.mark.parametrize("read", [read_xray, read_raster, read_dicom], ids=lambda f: f.__name__)
def test_fifo_is_refused_without_blocking(tmp_path: Path, read: Callable[[Path], object]) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # nothing writes to it: opening it to read would block forever
    assert _error_within(10, read, tmp_path / "pipe.png") == f"{tmp_path / 'pipe.png'}: not a regular file (a FIFO)"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_device_is_refused(tmp_path: Path) -> None:
    message = _error_within(10, read_xray, Path("/dev/null"))
    assert message == "/dev/null: not a regular file (a character device)"


def test_garbage_bytes(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ImageReadError, match="unrecognised content"):
        read_xray(tmp_path / "x.png")


def test_truncated_png(tmp_path: Path, gradient_image: np.ndarray) -> None:
    data = write_png(tmp_path / "full.png", gradient_image).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="corrupt or truncated"):
        read_xray(tmp_path / "cut.png")


def test_truncated_jpeg(tmp_path: Path, gradient_image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.round(gradient_image * 255).astype(np.uint8), "L").save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageReadError):
        read_xray(tmp_path / "cut.jpg")


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares a huge image (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, reading the garbage as tags
def test_tiff_whose_next_frame_is_garbage_is_refused_by_name() -> None:
    """The next-IFD offset of a one-frame TIFF pointed into its pixels: counting frames made Pillow raise
    TypeError ("Missing dimensions"), which the server once answered 500 (found by fuzzing)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 48), 1, np.uint8)).save(buf, format="TIFF")
    data = buf.getvalue()
    ifd = struct.unpack("<I", data[4:8])[0]
    at = ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0]  # after the first IFD's entries
    bad = data[:at] + struct.pack("<I", 200) + data[at + 4 :]
    for read in (lambda: probe_image(bad, name="upload"), lambda: read_xray(bad, target_size=32, name="upload")):
        with pytest.raises(ImageReadError, match="upload: corrupt or truncated image"):
            read()


def test_huge_declared_dimensions_refused_before_decoding(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_with_declared_size(60000, 60000))
    with pytest.raises(UnsafeInputError, match="decompression bomb"):
        read_xray(tmp_path / "bomb.png")


def test_pixel_limit_is_configurable(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_png(tmp_path / "a.png", gradient_image)
    with pytest.raises(UnsafeInputError, match="64x48"):
        read_xray(path, limits=ReadLimits(max_pixels=1000))


def test_file_size_limit(tmp_path: Path, gradient_image: np.ndarray) -> None:
    path = write_png(tmp_path / "a.png", gradient_image)
    with pytest.raises(UnsafeInputError, match="above the limit"):
        read_xray(path, limits=ReadLimits(max_file_bytes=100))


def test_extension_contradicting_content(tmp_path: Path, gradient_image: np.ndarray) -> None:
    data = write_png(tmp_path / "a.png", gradient_image).read_bytes()
    (tmp_path / "really_png.jpg").write_bytes(data)
    (tmp_path / "really_png.dcm").write_bytes(data)
    for name in ("really_png.jpg", "really_png.dcm"):
        with pytest.raises(ImageReadError, match="does not match its content") as err:
            read_xray(tmp_path / name)
        assert "check_extension=False in Python" in str(err.value)  # no CLI flag: named as the Python argument
    assert read_xray(tmp_path / "really_png.jpg", check_extension=False).pixels.shape == (48, 64)


def test_multiframe_refused(tmp_path: Path, gradient_image: np.ndarray) -> None:
    frames = [Image.fromarray(np.round(gradient_image * 255).astype(np.uint8), "L") for _ in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="3 frames"):
        read_xray(tmp_path / "stack.tif")


@pytest.mark.parametrize("seed", range(20))
def test_mutated_png_never_crashes(tmp_path: Path, gradient_image: np.ndarray, seed: int) -> None:
    """Random byte flips give either a valid image or an ImageReadError, nothing else."""
    data = bytearray(write_png(tmp_path / "a.png", gradient_image).read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(8, len(data), size=8):
        data[pos] = int(rng.integers(0, 256))
    (tmp_path / "m.png").write_bytes(bytes(data))
    try:
        img = read_xray(tmp_path / "m.png")
    except ImageReadError:
        return
    assert img.pixels.dtype == np.float32 and np.isfinite(img.pixels).all()
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
