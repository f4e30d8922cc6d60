"""Loader throughput: images/s one loader worker gets from raw PNG files vs the same images as shards.

Usage: python bench/loader_throughput.py [--shared ../shared/datasets] [--sizes 224,512] [--gpu-rates 1000,3000]
[--quick] [--out bench/results/loader_throughput_cpu.json]

One process on one thread (what one DataLoader worker has) reads the real 512 px PNG sets (JSRT and
the NIH ChestX-ray14 sample, pooled images-only) at each training size, in one run:

- ``raw_png``: the adapter's read of each file (PNG decode, grey [0, 1]) and the resize to the
  training size (antialiased bilinear, as a training view does);
- ``shards_png`` / ``shards_raw``: the same images pre-resized by ``xrayfm shards build`` (square,
  8-bit, PNG or raw pixels) and streamed back by ``ShardDataset`` (LitData), decoded to the same Sample.

Each is the best images/s of ``--repeats`` passes over every image. Derived per size: the speed-up
of shards over raw files (target: >= 10x at 224 px), and the loader workers that a
GPU step rate of R images/s needs (``ceil(R / images_per_s)``) for each R of ``--gpu-rates``; the
target is recorded as met or not per shard encoding. The
shard build is done first and not timed in the reading rates (its seconds are recorded). The
result records its provenance (``bench/provenance.py``). ``--quick`` reads 8 images of each set,
once: a check that the script works, not a measurement.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from provenance import write_result  # noqa: E402

from xrayfm.data.pool import PooledDataset, build_pool  # noqa: E402
from xrayfm.data.shard_format import ShardDataset, read_manifest  # noqa: E402
from xrayfm.data.shards import build_shards  # noqa: E402
from xrayfm.data.transforms import Resize  # noqa: E402

#: source label -> (folder under --shared, pool source options): images only, every split.
SETS = {"jsrt": ("jsrt_lungs", "source=jsrt&label_columns=nodule"), "nih": ("nih_cxr14_sample", "source=nih")}
ENCODINGS = ("png", "raw")
TARGET_SPEEDUP_224 = 10.0


def rate(read: Callable[[], Iterable[Any]], repeats: int) -> dict[str, float]:
    """Best images/s of ``repeats`` passes of ``read`` (an iterable of Samples, consumed here)."""
    rates, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for _ in read())
        rates.append(n / (time.perf_counter() - t0))
    return {"images": n, "images_per_s": round(max(rates), 2)}


def workers_needed(images_per_s: float, gpu_rates: Iterable[float]) -> dict[str, int]:
    """Loader workers that feed each GPU rate (images/s) at ``images_per_s`` per worker."""
    return {f"{r:g}": math.ceil(r / images_per_s) for r in gpu_rates}


def pool_of(shared: Path, limit: int | None) -> PooledDataset:
    """The images-only pool of :data:`SETS`, each set cut to its first ``limit`` images (None: all)."""
    pool = build_pool([f"csv:{shared / folder}?{opts}" for folder, opts in SETS.values()], targets=(),
                      dedupe="none")  # fmt: skip
    if limit is None:
        return pool
    taken: dict[str, int] = {}
    keep = []
    for i, r in enumerate(pool.records):
        source = r.meta["source"]
        if taken.get(source, 0) < limit:
            taken[source] = taken.get(source, 0) + 1
            keep.append(i)
    return pool.subset(keep)


def measure_size(pool: PooledDataset, size: int, work: Path, repeats: int, gpu_rates: list[float]) -> dict[str, Any]:
    """Raw files vs shards (each encoding) at ``size``: rates, speed-ups and workers needed."""
    resize = Resize((size, size))

    def raw() -> Iterable[Any]:
        return (resize(pool[i]) for i in range(len(pool)))

    readers: dict[str, Callable[[], Iterable[Any]]] = {"raw_png": raw}
    build_seconds = {}
    for encoding in ENCODINGS:
        out = work / f"shards_{size}_{encoding}"
        t0 = time.perf_counter()
        build_shards(pool, out, size=size, resize="square", encoding=encoding)
        build_seconds[encoding] = round(time.perf_counter() - t0, 2)
        splits = [s for s, c in read_manifest(out)["counts"].items() if c.get("total")]

        def shards(out: Path = out, splits: list[str] = splits) -> Iterable[Any]:
            return (s for split in splits for s in ShardDataset(out, split))

        readers[f"shards_{encoding}"] = shards
    result: dict[str, Any] = {}
    for name, read in readers.items():
        r = rate(read, repeats)
        result[name] = {**r, "workers_needed": workers_needed(r["images_per_s"], gpu_rates)}
        print(f"{size:>4} px  {name:<11} {r['images_per_s']:>9.1f} img/s  ({r['images']} images)")
    base = result["raw_png"]["images_per_s"]
    for encoding in ENCODINGS:
        result[f"shards_{encoding}"]["speedup_over_raw"] = round(result[f"shards_{encoding}"]["images_per_s"] / base, 2)
    result["shard_build_seconds"] = build_seconds
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--sizes", default="224,512", help="training sizes in px (default 224,512)")
    parser.add_argument("--gpu-rates", default="1000,3000,10000", help="GPU step rates in images/s")
    parser.add_argument("--repeats", type=int, default=3, help="passes per reader; the best counts (default 3)")
    parser.add_argument("--quick", action="store_true", help="8 images a set, one pass: checks the script works")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "loader_throughput_cpu.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    gpu_rates = [float(r) for r in args.gpu_rates.split(",")]
    repeats = 1 if args.quick else args.repeats
    pool = pool_of(args.shared, 8 if args.quick else None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="loader_throughput_") as tmp:
        for size in sizes:
            results[f"{size}px"] = measure_size(pool, size, Path(tmp), repeats, gpu_rates)
    at_224 = results.get("224px", {})
    speedups = {e: at_224[f"shards_{e}"]["speedup_over_raw"] for e in ENCODINGS if f"shards_{e}" in at_224}
    setup = {"threads_used": 1, "workers": 1, "repeats": repeats, "quick": args.quick, "images": len(pool),
             "sets": {k: v[0] for k, v in SETS.items()}, "source_size_px": 512, "bits": 8,
             "gpu_rates_images_per_s": gpu_rates}  # fmt: skip
    target = {"shards_speedup_at_224px": TARGET_SPEEDUP_224, "measured": speedups,
              "met": {e: v >= TARGET_SPEEDUP_224 for e, v in speedups.items()}}  # fmt: skip
    report = {"benchmark": "loader_throughput", "setup": setup, "results": results, "target": target}
    write_result(args.out, report, packages=("numpy", "pillow", "litdata"))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
