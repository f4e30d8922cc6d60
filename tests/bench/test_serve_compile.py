"""bench/serve_compile.py: the round-by-round comparison of --compile with the eager server, its README table,
and (slow) a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("serve_compile")


def row(k: int, setting: str, clients: int, rate: float, p50: float, startup: float = 5.0) -> dict:
    return {"round": k, "setting": setting, "clients": clients, "requests_per_s": rate, "p50_ms": p50,
            "startup_s": startup}  # fmt: skip


ROWS = [row(0, "eager", 16, 50, 0), row(0, "compiled", 16, 60, 0, 60.0), row(0, "eager", 1, 0, 20.0),
        row(0, "compiled", 1, 0, 18.5, 60.0), row(1, "eager", 16, 100, 0), row(1, "compiled", 16, 125, 0, 20.0),
        row(1, "eager", 1, 0, 10.0), row(1, "compiled", 1, 0, 11.0, 20.0)]  # fmt: skip


def test_settings_are_compared_within_each_round(bench: ModuleType) -> None:
    # the machine is twice as fast in round 1: the ratio within each round stays 1.2 and 1.25
    got = bench.paired(ROWS, 16)
    speed = got["requests_per_s_16_clients_compiled_over_eager"]
    assert speed["rounds"] == [1.2, 1.25] and speed["median"] == 1.225 and (speed["min"], speed["max"]) == (1.2, 1.25)
    assert got["p50_ms_1_client_compiled_minus_eager"]["rounds"] == [-1.5, 1.0]
    assert got["startup_s"]["compiled"]["rounds"] == [60.0, 20.0] and got["startup_s"]["eager"]["median"] == 5.0


def test_the_readme_table_reads_the_summary(bench: ModuleType) -> None:
    report = {"summary": [{"arch": "eva_x_tiny_patch16", "precision": "bf16", **bench.paired(ROWS, 16)}],
              "runs": ROWS, "provenance": {}}  # fmt: skip
    table = load_bench("readme_tables").serve_compile_table(report, "bench/results/serve_compile_cpu.json")
    assert "| Ti | bf16 | 1.23x (1.20-1.25) | -0.2 (-1.5 to +1.0) | 5 / 40 (20-60) |" in table
    assert "Median (range) over 2 rounds" in table


@pytest.mark.slow  # four server processes, two of them compiling
def test_a_tiny_run_alternates_the_settings_and_writes_the_summary(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    argv = ["--archs", "eva_x_tiny_patch16", "--precisions", "fp32", "--rounds", "2", "--requests", "4",
            "--clients", "2", "--size", "32", "--image", "64", "--max-batch", "2", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert [(r["round"], r["setting"], r["clients"]) for r in report["runs"]] == [
        (k, s, c) for k in (0, 1) for s in ("eager", "compiled") for c in (1, 2)
    ]
    assert all(r["errors"] == 0 for r in report["runs"])
    (summary,) = report["summary"]
    assert len(summary["requests_per_s_2_clients_compiled_over_eager"]["rounds"]) == 2
