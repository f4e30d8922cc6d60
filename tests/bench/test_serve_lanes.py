"""bench/serve_lanes.py: the round-by-round comparison of --lanes 2 with --lanes 1, and (slow) a tiny run."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("serve_lanes")


def row(k: int, lanes: int, clients: int, rate: float, p50: float) -> dict:
    return {"round": k, "lanes": lanes, "clients": clients, "requests_per_s": rate, "p50_ms": p50}


def test_lanes_are_compared_within_each_round(bench: ModuleType) -> None:
    # the machine is twice as fast in round 1: the ratio within each round stays 1.2 and 1.25
    rows = [row(0, 1, 16, 50, 0), row(0, 2, 16, 60, 0), row(0, 1, 1, 0, 20.0), row(0, 2, 1, 0, 20.5),
            row(1, 1, 16, 100, 0), row(1, 2, 16, 125, 0), row(1, 1, 1, 0, 10.0), row(1, 2, 1, 0, 9.0)]  # fmt: skip
    got = bench.paired(rows, 16)
    speed = got["requests_per_s_16_clients_lanes2_over_lanes1"]
    assert speed["rounds"] == [1.2, 1.25] and speed["median"] == 1.225 and (speed["min"], speed["max"]) == (1.2, 1.25)
    assert got["p50_ms_1_client_lanes2_minus_lanes1"]["rounds"] == [0.5, -1.0]


@pytest.mark.slow  # four server processes, each importing torch
def test_a_tiny_run_alternates_the_lanes_and_writes_the_summary(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "lanes.json"
    argv = ["--archs", "eva_x_tiny_patch16", "--backends", "torch", "--rounds", "2", "--requests", "4",
            "--clients", "2", "--size", "32", "--image", "64", "--max-batch", "2", "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert [(r["round"], r["lanes"], r["clients"]) for r in report["runs"]] == [
        (k, lanes, c) for k in (0, 1) for lanes in (1, 2) for c in (1, 2)
    ]
    assert all(r["errors"] == 0 for r in report["runs"])
    (summary,) = report["summary"]
    assert len(summary["requests_per_s_2_clients_lanes2_over_lanes1"]["rounds"]) == 2
    assert {r["lanes"] for r in report["runs"] if r["clients"] == 1} == {1, 2}
