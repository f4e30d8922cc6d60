"""Structured mutations of every format the readers take (byte flips, truncations, insertions, header
splices, runs of one value): each read gives a valid image or a one-line ImageReadError / UnsafeInputError.

Compressed DICOM is read in a child process, as the server reads DICOM uploads, since a native decoder
may kill its process on such files. The server's robustness test sends a few hundred mutations as
uploads; this one reads thousands directly, as fuzzing the readers found failures (pydicom's
unconvertible value representations, Pillow's TypeError on a TIFF's damaged frame directory, GDCM's
crashes) that a few hundred uploads reached only on some runs.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from fuzz_inputs import mutations
from PIL import Image
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from xrayfm import ImageReadError, UnsafeInputError
from xrayfm.io.reader import probe_image, read_xray
from xrayfm.io.sandbox import DecodeSandbox
from xrayfm.io.writers import write_dicom


def raster(fmt: str, mode: str) -> bytes:
    """A small noisy image saved by Pillow as ``fmt`` in ``mode`` (L, I;16 or RGB)."""
    grey = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    image = Image.fromarray(grey.astype(np.uint16) * 200) if mode == "I;16" else Image.fromarray(grey)
    buf = io.BytesIO()
    (image.convert("RGB") if mode == "RGB" else image).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    folder = tmp_path_factory.mktemp("seeds")
    pixels = np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)
    dicoms = [write_dicom(folder / f"{bits}.dcm", pixels, bits_stored=bits, window=(100, 200)).read_bytes()
              for bits in (8, 12, 16)]  # fmt: skip
    kinds = [
        ("PNG", "L"),
        ("PNG", "I;16"),
        ("PNG", "RGB"),
        ("JPEG", "L"),
        ("TIFF", "L"),
        ("TIFF", "I;16"),
        ("BMP", "L"),
    ]
    return dicoms + [raster(fmt, mode) for fmt, mode in kinds]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's and pydicom's about the damage they read past
@pytest.mark.parametrize("seed", range(3))
def test_mutated_files_of_every_format_are_read_or_refused_by_name(seeds: list[bytes], seed: int) -> None:
    reads: list[Callable[[bytes], object]] = [
        lambda data: probe_image(data, name="upload").pixels,  # width x height, as the header declares
        lambda data: read_xray(data, target_size=32, name="upload").pixels,
        lambda data: read_xray(data, name="upload").pixels,
    ]
    refused = 0
    for data in mutations(seeds, 700, seed=seed):
        for read in reads:
            try:
                pixels = read(data)
            except (ImageReadError, UnsafeInputError) as exc:
                assert str(exc).startswith("upload: ") and "\n" not in str(exc)
                refused += 1
                continue
            if isinstance(pixels, np.ndarray):
                assert pixels.dtype == np.float32 and np.isfinite(pixels).all()
                assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert 0 < refused < 3 * 700  # some mutations stay readable, some do not


def test_the_mutations_are_seeded(seeds: list[bytes]) -> None:
    assert mutations(seeds, 20, seed=1) == mutations(seeds, 20, seed=1) != mutations(seeds, 20, seed=2)


def test_the_seeds_are_read(seeds: list[bytes]) -> None:
    assert all(read_xray(data, name="upload").pixels.size for data in seeds)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A 12-bit radiograph-like array as RLE, JPEG Lossless SV1, JPEG-LS and JPEG 2000 DICOM files."""
    from test_dicom_codecs import stored_array, write_compressed, write_plain  # the codec tests' writers

    folder = tmp_path_factory.mktemp("compressed")
    plain = write_plain(folder / "plain.dcm", stored_array(12, (64, 80)), 12)
    syntaxes = [RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless]
    return [write_compressed(plain, folder / f"{i}.dcm", syntax).read_bytes() for i, syntax in enumerate(syntaxes)]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mutated_compressed_dicom_is_read_or_refused_by_name_in_a_child_process(compressed: list[bytes]) -> None:
    """Read as the server reads DICOM uploads (:mod:`xrayfm.io.sandbox`), since a native decoder
    may kill its process on these (GDCM did): a dead child is a refusal too, this process reads on."""
    sandbox = DecodeSandbox(1)
    outcomes = []
    try:
        for data in mutations(compressed, 200, seed=0):
            for target_size in (32, None):
                try:
                    pixels = sandbox.read(data, target_size=target_size, name="upload").pixels
                except ImageReadError as exc:  # DecoderCrashed included
                    assert str(exc).startswith("upload: ") and "\n" not in str(exc)
                    outcomes.append("refused")
                    continue
                assert pixels.dtype == np.float32 and np.isfinite(pixels).all()
                assert 0.0 <= pixels.min() and pixels.max() <= 1.0
                outcomes.append("read")
    finally:
        sandbox.close()
    assert {"read", "refused"} <= set(outcomes)
