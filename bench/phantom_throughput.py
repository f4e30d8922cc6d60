"""Phantom generator throughput: images per second on one CPU core.

Usage: python bench/phantom_throughput.py [--n 300] [--sizes 128 256 512] [--out bench/results/phantom_throughput.json]

Measures ``generate_phantom`` alone and ``write_phantom_dataset`` (native layout, PNG + masks +
CSVs) at each size, with BLAS/OpenMP pinned to one thread, best and median of a few rounds, and
records its provenance (``bench/provenance.py``: command, commit, date, machine, versions).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from provenance import write_result  # noqa: E402

from xrayfm.data.phantom import PhantomConfig, generate_phantom  # noqa: E402
from xrayfm.data.phantom_io import write_phantom_dataset  # noqa: E402


def measure(size: int, n: int, repeats: int) -> dict[str, float]:
    """Best and median images/s over ``repeats`` rounds (the best is the least disturbed by
    other load on a shared machine)."""
    cfg = PhantomConfig(size=size)
    generate_phantom(0, 0, cfg)  # warm-up
    gen, write = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            generate_phantom(i, r, cfg)
        gen.append(n / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_phantom_dataset(Path(tmp) / "ph", n, r, size=size)
            write.append(n / (time.perf_counter() - t0))
    return {
        "size": size, "n": n, "repeats": repeats,
        "generate_images_per_s": round(max(gen), 1), "generate_images_per_s_median": round(float(np.median(gen)), 1),
        "write_native_images_per_s": round(max(write), 1),
        "write_native_images_per_s_median": round(float(np.median(write)), 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "phantom_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [measure(s, args.n if s <= 256 else max(args.n // 4, 20), args.repeats) for s in args.sizes]
    report = {"benchmark": "phantom_throughput", "setup": {"threads_used": 1}, "results": results}
    out = write_result(args.out, report, packages=("numpy", "pillow"))
    for r in results:
        print(
            f"{r['size']:>4} px: generate {r['generate_images_per_s']:7.1f} img/s "
            f"(median {r['generate_images_per_s_median']:.1f}), write native {r['write_native_images_per_s']:7.1f} "
            f"img/s (median {r['write_native_images_per_s_median']:.1f})"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
