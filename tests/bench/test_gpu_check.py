"""bench/gpu/check.sh: the GPU checks a session lent a GPU runs in one call (its plan, budget and, slow, a CPU smoke run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench_modules import load_bench

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "check.sh"


def check(tmp_path: Path, timeout: float, **env: str) -> str:
    """Run the script with ``env`` (this interpreter, results under ``tmp_path``); its console output."""
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    res = subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def planned(output: str) -> dict[str, list[str]]:
    """Each step's command from a ``DRY=1`` run."""
    return {m[1]: m[2].split() for m in re.finditer(r"\] (\w+): would run: (.*)", output)}


def options_of(name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """bench/NAME.py's ``--help`` (in this process: the imports are paid once)."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    main = load_bench(name).main
    with pytest.raises(SystemExit) as stop:
        main() if name == "mim_throughput" else main(["--help"])  # mim_throughput reads sys.argv
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_every_planned_command_uses_options_its_benchmark_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    plans = {quick: planned(check(tmp_path, 120, DRY="1", QUICK=quick, BUDGET="900")) for quick in ("0", "1")}
    assert list(plans["0"]) == ["serve_latency_ti", "serve_compile", "serve_latency_s", "mim_throughput",
                                "adam_throughput", "multitask_units"]  # fmt: skip
    assert list(plans["1"]) == ["serve_latency", "serve_compile", "mim_throughput", "adam_throughput",
                                "multitask_units"]  # fmt: skip
    helped: dict[str, str] = {}
    for quick, steps in plans.items():
        for step, argv in steps.items():
            bench = Path(argv[1]).stem
            assert argv[0] == sys.executable and argv[1] == f"bench/{bench}.py" and step.startswith(bench)
            assert argv[argv.index("--out") + 1].startswith(str(tmp_path / "out"))
            if bench not in helped:
                helped[bench] = options_of(bench, monkeypatch, capsys)
            for option in (a for a in argv[2:] if a.startswith("--")):
                assert re.search(rf"{option}\b", helped[bench]), f"{step}: no option {option}"
            if quick == "0" and bench != "mim_throughput":  # mim_throughput takes the GPU whenever one is visible
                assert argv[argv.index("--device") + 1] == "cuda"


def test_steps_past_the_budget_are_skipped_and_named(tmp_path: Path) -> None:
    out = check(tmp_path, 120, DRY="1", BUDGET="0")
    assert "would run" not in out
    assert out.count("skipped, the budget of 0s is spent") == 6
    assert "skipped" in (tmp_path / "out" / "gpu_check.log").read_text()


@pytest.mark.slow  # about 4 minutes on 2 cores: five benchmarks at toy sizes, two servers compiling
def test_a_quick_cpu_run_completes_every_step(tmp_path: Path) -> None:
    out = check(tmp_path, 900, QUICK="1", DEVICE="cpu", BUDGET="800")
    assert out.count(": done") == 5, out
    results = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert results == ["adam_throughput.json", "mim_throughput.json", "multitask_units.json", "serve_compile.json",
                       "serve_latency.json"]  # fmt: skip
    assert json.loads((tmp_path / "out" / "serve_compile.json").read_text())["device"] == "cpu"
