"""bench/loader_throughput.py: the workers a GPU rate needs, and a --quick run on the real sets writing its JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench_modules import load_bench


def test_workers_needed_round_up() -> None:
    bench = load_bench("loader_throughput")
    assert bench.workers_needed(300.0, [1000, 3000, 300]) == {"1000": 4, "3000": 10, "300": 1}


def test_quick_run_compares_raw_files_and_shards_at_each_size(shared_datasets: Path, tmp_path: Path) -> None:
    bench = load_bench("loader_throughput")
    out = tmp_path / "loader_throughput.json"
    bench.main(["--quick", "--shared", str(shared_datasets), "--sizes", "224,512", "--gpu-rates", "1000,5000",
                "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["benchmark"] == "loader_throughput" and report["setup"]["images"] == 16  # 8 JSRT + 8 NIH
    assert report["provenance"]["software"]["litdata"] and report["provenance"]["machine"]
    for size in ("224px", "512px"):
        result = report["results"][size]
        raw = result["raw_png"]["images_per_s"]
        for name in ("raw_png", "shards_png", "shards_raw"):
            r = result[name]
            assert r["images"] == 16 and r["images_per_s"] > 0  # every image read, each way
            assert r["workers_needed"] == {k: math.ceil(float(k) / r["images_per_s"]) for k in ("1000", "5000")}
        for encoding in ("png", "raw"):
            assert result[f"shards_{encoding}"]["speedup_over_raw"] == round(
                result[f"shards_{encoding}"]["images_per_s"] / raw, 2
            )
    at_224 = {e: report["results"]["224px"][f"shards_{e}"]["speedup_over_raw"] for e in ("png", "raw")}
    assert report["target"]["measured"] == at_224
    assert report["target"]["met"] == {e: v >= 10.0 for e, v in at_224.items()}


def _reads(bench, rates: dict[str, float], build: dict[str, float], gpu_rates: list[float]) -> dict:
    """One size's results as the script writes them, from images/s per read and shard build seconds."""
    result = {k: {"images": 1386, "images_per_s": r, "workers_needed": bench.workers_needed(r, gpu_rates)}
              for k, r in rates.items()}  # fmt: skip
    for encoding in ("png", "raw"):
        result[f"shards_{encoding}"]["speedup_over_raw"] = round(rates[f"shards_{encoding}"] / rates["raw_png"], 2)
    return {**result, "shard_build_seconds": build}


def test_readme_table_of_the_loader_throughput_benchmark(tmp_path: Path) -> None:
    bench, tables = load_bench("loader_throughput"), load_bench("readme_tables")
    gpu_rates = [1000.0, 3000.0]
    at_224 = _reads(bench, {"raw_png": 95.44, "shards_png": 412.6, "shards_raw": 1234.5}, {"png": 30.25, "raw": 12.04},
                    gpu_rates)  # fmt: skip
    at_512 = _reads(bench, {"raw_png": 60.0, "shards_png": 90.0, "shards_raw": 300.0}, {"png": 80.0, "raw": 40.0},
                    gpu_rates)  # fmt: skip
    measured = {e: at_224[f"shards_{e}"]["speedup_over_raw"] for e in ("png", "raw")}
    report = {
        "benchmark": "loader_throughput",
        "setup": {"threads_used": 1, "workers": 1, "repeats": 3, "quick": False, "images": 1386,
                  "sets": {"jsrt": "jsrt_lungs", "nih": "nih_cxr14_sample"}, "source_size_px": 512, "bits": 8,
                  "gpu_rates_images_per_s": gpu_rates},
        "results": {"224px": at_224, "512px": at_512},
        "target": {"shards_speedup_at_224px": 10.0, "measured": measured,
                   "met": {e: v >= 10.0 for e, v in measured.items()}},
        "provenance": {"command": ["bench/loader_throughput.py"], "date": "2026-01-01"},
    }  # fmt: skip
    (tmp_path / "loader_throughput_cpu.json").write_text(json.dumps(report))
    block = "<!-- bench:loader_throughput_cpu:start -->\n<!-- bench:loader_throughput_cpu:end -->\n"
    text = tables.render(block, tmp_path)
    header = "| px | read | images/s per worker | speed-up over raw files | workers for 1,000 images/s | workers for 3,000 images/s |"  # fmt: skip
    assert header + "\n|---|---|---|---|---|---|\n" in text
    assert "| 224 | raw PNG files | 95 | 1x (baseline) | 11 | 32 |" in text  # ceil(1000 / 95.44), ceil(3000 / 95.44)
    assert "| 224 | shards, PNG | 413 | 4.3x | 3 | 8 |" in text
    assert "| 224 | shards, raw pixels | 1,240 | 12.9x | 1 | 3 |" in text
    assert "| 512 | shards, raw pixels | 300 | 5.0x | 4 | 10 |" in text
    flat = " ".join(text.split())
    assert "at least 10.0x faster than raw files at 224 px: png 4.3x (not met), raw 12.9x (met)" in flat
    assert "1,386 images (8-bit PNG, 512 px) from `jsrt_lungs` (jsrt), `nih_cxr14_sample` (nih); best of 3" in flat
    assert "224 px: png 30.3 s, raw 12.0 s; 512 px: png 80.0 s, raw 40.0 s" in flat
    assert "`python bench/loader_throughput.py`" in flat and "--quick" not in flat
    quick = tables.loader_throughput_table({**report, "setup": {**report["setup"], "quick": True}}, "l.json")
    assert "A --quick run: a check that the script works, not a measurement." in " ".join(quick.split())
