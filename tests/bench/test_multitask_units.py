"""bench/multitask_units.py: Foundation X step throughput, memory and trained parameters per unit and phase."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from bench_modules import load_bench

from xrayfm.errors import XrayfmError


@pytest.fixture(scope="module")
def units() -> ModuleType:
    return load_bench("multitask_units")


def test_quick_run_measures_every_unit_kind_and_phase(units: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "units.json"
    assert units.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {(r["kind"], r["phase"]): r for r in report["results"]}
    assert set(rows) == {("classification", "released"), ("localization", "locked"), ("localization", "released"),
                         ("segmentation", "locked"), ("segmentation", "released")}  # fmt: skip
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["peak_mib"] > 0 and r["ema_update_ms"] > 0
        assert 0 < r["updated_params"] <= r["trainable_params"] <= r["total_params"]
    for kind in ("localization", "segmentation"):
        locked, released = rows[kind, "locked"], rows[kind, "released"]
        # a lock trains the unit's head alone: every parameter left trainable gets a gradient
        assert locked["trainable_params"] == locked["updated_params"] < released["updated_params"]
        assert released["trainable_params"] == released["total_params"]
    # a step runs one unit: the other units' heads (and, for classification, the dense parts) get no gradient
    assert rows["classification", "released"]["updated_params"] < rows["segmentation", "released"]["updated_params"]
    setup = report["setup"]
    assert (setup["arch"], setup["img_size"], setup["detr_preset"], setup["quick"]) == ("resnet18", 64, "tiny", True)
    assert {"command", "git", "machine", "software"} <= report["provenance"].keys()
    table = units.multitask_units_table(report, "units.json")
    assert f"| localization (`{rows['localization', 'locked']['unit']}`) | locked |" in table


def test_readme_table_of_the_multitask_units_benchmark(tmp_path: Path) -> None:
    tables = load_bench("readme_tables")
    row = {"kind": "classification", "unit": "nih_cxr14/findings", "phase": "released", "images_per_s": 12.5,
           "peak_mib": 4567.5, "step_mib": 1234.4, "trainable_params": 30123456, "updated_params": 25000000}  # fmt: skip
    report = {
        "setup": {"device": "cpu", "arch": "resnet50", "img_size": 224, "batch_size": 24,
                  "recipe": "foundation_x_shared", "detr_preset": "paper",
                  "detr": {"d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "num_queries": 900},
                  "precision": "fp32", "timed_steps": 5, "warmup_steps": 2},
        "results": [row, {**row, "kind": "localization", "unit": "vindr_cxr/boxes", "phase": "locked",
                          "images_per_s": 3.25, "peak_mib": 999.5, "step_mib": 10.49, "updated_params": 1234}],
        "provenance": {"command": ["bench/multitask_units.py"], "date": "2026-01-01"},
    }  # fmt: skip
    (tmp_path / "multitask_units_cpu.json").write_text(json.dumps(report))
    block = "<!-- bench:multitask_units_cpu:start -->\n<!-- bench:multitask_units_cpu:end -->\n"
    text = tables.render(block, tmp_path)
    assert "| unit | phase | images/s | peak RSS MiB (steps add) | trainable params | updated params |" in text
    assert "| classification (`nih_cxr14/findings`) | released | 13 | 4,568 (1,234) | 30,123,456 | 25,000,000 |" in text
    assert "| localization (`vindr_cxr/boxes`) | locked | 3.3 | 1,000 (10) | 30,123,456 | 1,234 |" in text
    flat = " ".join(text.split())
    assert "Deformable DETR paper (d_model 256, 6 + 6 layers, 900 queries), fp32, 5 timed steps after 2" in flat
    assert "`python bench/multitask_units.py`" in flat and "2026-01-01" in flat
    gpu = tables.multitask_units_table({**report, "setup": {**report["setup"], "device": "cuda"}}, "u.json")
    assert "| peak allocated MiB (steps add) |" in gpu


def test_detr_presets(units: ModuleType) -> None:
    paper, cpu = units.detr_settings("paper"), units.detr_settings("cpu")
    assert (paper["d_model"], paper["encoder_layers"], paper["decoder_layers"], paper["num_queries"]) == (
        256, 6, 6, 900,
    )  # fmt: skip
    assert cpu["d_model"] < paper["d_model"] and cpu["num_queries"] < paper["num_queries"]


def test_cuda_asked_for_without_cuda_is_a_user_error(units: ModuleType) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(XrayfmError, match="--device cuda"):
        units.main(["--device", "cuda"])
