"""bench/http_parsers.py: settings compared within rounds against h11 + multipart, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench

pytest.importorskip("httptools")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("http_parsers")


def test_each_setting_is_compared_with_the_baseline_within_its_round(bench: ModuleType) -> None:
    """Round 1 runs twice as slow: the ratios within each round stay put, the medians are per setting."""
    rows = []
    for k, scale in ((0, 1.0), (1, 2.0)):
        for (parser, upload), cpu in {("h11", "multipart"): 0.6, ("h11", "body"): 0.42, ("httptools", "multipart"): 0.48,
                                      ("httptools", "body"): 0.3}.items():  # fmt: skip
            rows.append(
                {"round": k, "parser": parser, "upload": upload, "p50_ms": cpu * scale, "server_cpu_ms": cpu * scale}
            )
    got = {(e["parser"], e["upload"]): e for e in bench.summary(rows)}
    assert got["h11", "multipart"]["server_cpu_ms_vs_h11_multipart"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert got["httptools", "body"]["server_cpu_ms_vs_h11_multipart"] == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert got["httptools", "body"]["server_cpu_ms"] == pytest.approx(0.45)  # median of 0.3 and 0.6


def test_a_tiny_run_measures_every_setting_and_renders(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    assert bench.main(["--rounds", "1", "--requests", "5", "--image", "32", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {(e["parser"], e["upload"]) for e in report["summary"]} == {
        ("h11", "body"), ("h11", "multipart"), ("httptools", "body"), ("httptools", "multipart")}  # fmt: skip
    assert all(r["p50_ms"] > 0 for r in report["runs"]) and "httptools" in report["provenance"]["software"]
    tables = load_bench("readme_tables")
    text = tables.http_parsers_table(report, "http.json")
    assert "| httptools | body |" in text and "Median (range) over 1 alternating rounds of 5" in text
