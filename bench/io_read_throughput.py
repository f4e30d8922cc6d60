"""Image reading throughput of ``xrayfm.io.read_xray`` on the real samples in shared/datasets.

Usage: python bench/io_read_throughput.py [--shared ../shared/datasets] [--out bench/results/io_read_throughput.json]

Reads every file of a few real sets (8-bit PNG at 224/512 px, uncompressed and JPEG 2000 CR
DICOM at ~1800x1900) on one thread, best of three rounds, and records its provenance
(``bench/provenance.py``: command, commit, date, machine, versions). The JPEG 2000 files are read
twice: at full size, and for a 512 px model (``read_xray(..., target_size=512)``: the coarsest
resolution level still covering 512 px, here half size). The point is to know whether decoding,
not the model, will bound a data loader on a given machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from provenance import write_result  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.uid import JPEG2000Lossless  # noqa: E402

from xrayfm.io import read_xray  # noqa: E402

#: name -> (folder, file pattern, target_size passed to read_xray)
SETS = {
    "png8_224 (kermany)": ("kermany_pneumonia_test224/images", "*.png", None),
    "png8_512 (jsrt)": ("jsrt_lungs/images", "*.png", None),
    "dicom_uncompressed (CR ~1.9k)": ("dicom_cr_samples/dicom", "*_UNCR.dcm", None),
    "dicom_jpeg2000 (CR ~1.9k)": ("dicom_cr_samples/dicom", "*_J2KR.dcm", None),
    "dicom_jpeg2000 for 512 px (CR ~1.9k)": ("dicom_cr_samples/dicom", "*_J2KR.dcm", 512),
}


def measure(files: list[Path], target_size: int | None = None, repeats: int = 3) -> dict[str, float]:
    """Best and median files/s and (decoded) megapixels/s over ``repeats`` passes."""
    rates, mpix = [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        mpix = sum(read_xray(p, target_size=target_size).pixels.size for p in files) / 1e6
        dt = time.perf_counter() - t0
        rates.append(len(files) / dt)
    best = max(rates)
    return {
        "files": len(files),
        "files_per_s": round(best, 2),
        "files_per_s_median": round(float(np.median(rates)), 2),
        "megapixels_per_s": round(best * mpix / len(files), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "io_read_throughput.json"
    )
    args = parser.parse_args()
    results = {}
    for name, (folder, pattern, target_size) in SETS.items():
        files = sorted((args.shared / folder).glob(pattern))
        if files:
            results[name] = {"target_size": target_size, **measure(files, target_size)}
            print(f"{name:<38} {results[name]}")
    setup = {
        "threads_used": 1,
        # the order pydicom tries its plugins in at full size (public only sorted); target_size reads
        # decode with Pillow's OpenJPEG
        "jpeg2000_full_size_plugins": list(get_decoder(JPEG2000Lossless)._available),
    }
    report = {"benchmark": "io_read_throughput", "setup": setup, "results": results}
    packages = ("numpy", "pillow", "pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg")
    write_result(args.out, report, packages=packages)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
