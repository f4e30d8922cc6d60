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
    table = units.markdown_table(report, "units.json")
    assert f"| localization (`{rows['localization', 'locked']['unit']}`) | locked |" in table


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
