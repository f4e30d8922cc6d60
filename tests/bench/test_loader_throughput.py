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
