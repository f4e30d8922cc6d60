"""bench/paired_servers.py: the options the paired server benchmarks share (device, result file)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from bench_modules import load_bench


@pytest.fixture(scope="module")
def paired() -> ModuleType:
    return load_bench("paired_servers")


def test_the_result_file_is_named_after_the_device(paired: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    args = paired.parse_paired(paired.paired_arguments("x"), "serve_compile", ["--device", "cpu"])
    assert args.device == "cpu" and args.out == paired.RESULTS / "serve_compile_cpu.json"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = paired.parse_paired(paired.paired_arguments("x"), "serve_compile", ["--device", "auto"])
    assert args.device == "cuda" and args.out == paired.RESULTS / "serve_compile_gpu.json"
    args = paired.parse_paired(paired.paired_arguments("x"), "serve_lanes", ["--device", "cuda", "--out", "r.json"])
    assert str(args.out) == "r.json"


def test_cuda_without_cuda_stops_in_one_line(paired: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda: CUDA is not available here"):
        paired.parse_paired(paired.paired_arguments("x"), "serve_compile", ["--device", "cuda"])


def test_serve_lanes_on_a_gpu_leaves_onnx_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lanes = load_bench("serve_lanes")
    with pytest.raises(SystemExit, match="nothing to measure .*use --backends torch"):
        lanes.main(["--device", "cuda", "--backends", "onnx"])
