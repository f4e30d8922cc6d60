"""bench/foundation_x_real.py: single-task baselines get the multi-task run's steps on their unit, and the quick
benchmark writes paired differences that ``xrayfm compare --head`` reproduces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench

from xrayfm.cli import main
from xrayfm.pretrain.multitask_recipe import parse_recipe

REPO = Path(__file__).resolve().parents[2]
UNITS = {"nih/findings", "kermany/pneumonia", "tbx11k/tb", "tbx11k/lesions", "nih/lesions", "jsrt/nodule",
         "jsrt/lungs", "covid/lungs"}  # fmt: skip


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("foundation_x_real")


def test_a_single_task_recipe_is_its_unit_alone_with_the_given_steps(bench: ModuleType, shared_datasets: Path) -> None:
    args = bench.parse_args(["--shared", str(shared_datasets)])
    mapping = bench.multitask_mapping(args)
    assert {f"{u['dataset']}/{u['task']}" for u in mapping["cycle"]} == UNITS and mapping["cycles"] == 3
    single = parse_recipe(bench.single_task_mapping(mapping, "jsrt/lungs", 48))
    assert list(single.datasets) == ["jsrt"] and list(single.datasets["jsrt"].tasks) == ["lungs"]
    (unit,) = single.cycle
    assert (unit.key, unit.steps, unit.lock_fraction, single.cycles) == ("jsrt/lungs", 48, 0.0, 1)
    assert single.consistency_weight == 0.0 and mapping["consistency_weight"] == 0.5  # the shipped one is untouched
    assert single.datasets["jsrt"].options == mapping["datasets"]["jsrt"]["options"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick"])  # a smoke run never overwrites the committed results


def _run(shared: Path, work: Path, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "foundation_x_real.py"), "--quick", "--shared", str(shared), "--work",
           str(work), "--out", str(out), "--accelerator", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_benchmark_pairs_each_unit_with_its_single_task_run(shared_datasets: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    report = _run(shared_datasets, work, tmp_path / "r.json")
    assert report["benchmark"] == "foundation_x_real" and report["quick"] and report["arch"] == "resnet18"
    assert {"command", "git", "date", "machine", "software"} <= report["provenance"].keys()
    (seed,) = report["seeds"].values()
    assert set(seed["units"]) == set(report["units"]) == UNITS
    for key, unit in seed["units"].items():
        budget = unit["budget"]
        assert budget["single_task_steps"] == budget["multitask_unit_steps"] == 1
        assert budget["multitask_total_steps"] == len(UNITS)
        assert unit["split"] == ("val" if key.startswith("tbx11k") else "test")
        st = json.loads((work / unit["single_task_run"] / "summary.json").read_text())
        assert list(st["unit_images"]) == [key] and st["steps"] == 1
        n = unit["single_task"]["n"]
        assert unit["multitask_student"]["n"] == unit["multitask_teacher"]["n"] == n > 0
        for d in unit["differences"].values():
            assert d["n"] == n and d["difference"] == pytest.approx(d["b"] - d["a"])
        assert unit["differences"]["student_minus_single"]["b"] == pytest.approx(unit["multitask_student"]["value"])
        for name, d in unit["differences"].items():  # pooled over one seed: that seed's difference, same images
            pooled = report["units"][key][name]["pooled"]
            assert pooled["per_seed"] == pytest.approx([d["difference"]]) and pooled["n_boot"] <= 20
            assert pooled["low"] is None or pooled["low"] <= pooled["high"]
    # the recorded difference is what xrayfm compare gives for the same pair, heads and weights
    unit = seed["units"]["jsrt/nodule"]
    options = ["-o", "label_columns=('nodule',)", "-o", "mask_columns=('mask',)", "-o", "mask_classes=('lungs',)",
               "-o", "boxes_file=None"]  # fmt: skip
    out = tmp_path / "cmp"
    code = main(["compare", str(work / unit["single_task_run"]), str(work / seed["multitask_run"]), "csv",
                 str(shared_datasets / "jsrt_lungs"), *options, "--head", "jsrt/nodule", "--weights", "student",
                 "--threshold", "0.5", "--n-boot", "20", "--out", str(out)])  # fmt: skip
    assert code == 0
    compared = json.loads((out / "compare.json").read_text())["tasks"]["labels"]["differences"]["mean_auroc"]
    recorded = unit["differences"]["student_minus_single"]
    assert {k: compared[k] for k in ("a", "b", "difference", "low", "high")} == pytest.approx(
        {k: recorded[k] for k in ("a", "b", "difference", "low", "high")}
    )
    again = _run(shared_datasets, work, tmp_path / "again.json")  # every run and evaluation reused
    assert again["units"] == report["units"] and again["wall_seconds"] < report["wall_seconds"] / 2
