"""bench/foundation_x_label_efficiency.py: JSRT is held out of the multi-task pretraining, and the quick benchmark
fine-tunes both backbones at every fraction and seed and pairs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench

from xrayfm.pretrain.multitask_recipe import parse_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("foundation_x_label_efficiency")


def test_the_pretraining_recipe_never_sees_jsrt(bench: ModuleType, shared_datasets: Path) -> None:
    args = bench.parse_args(["--shared", str(shared_datasets)])
    full = bench.multitask_mapping(args)
    recipe = parse_recipe(bench.without_dataset(full, "jsrt"))
    assert "jsrt" not in recipe.datasets and all(u.dataset != "jsrt" for u in recipe.cycle)
    assert {u.key for u in recipe.cycle} == {f"{u['dataset']}/{u['task']}" for u in full["cycle"]} - {
        "jsrt/nodule", "jsrt/lungs"}  # fmt: skip
    assert "jsrt" in full["datasets"]  # the shipped mapping is untouched
    cfg = bench.finetune_config(args, Path("w"))
    assert Path(cfg.root).name == "jsrt_lungs" and cfg.eval_splits == ("test",) and cfg.train.steps == 150
    assert cfg.crop_pct == 1.0  # both arms see the whole image, so their reference masks are the same
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick"])  # a smoke run never overwrites the committed results


@pytest.mark.slow
def test_quick_benchmark_fine_tunes_both_backbones_and_pairs_them(shared_datasets: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(REPO / "bench" / "foundation_x_label_efficiency.py"), "--quick", "--shared",
           str(shared_datasets), "--work", str(tmp_path / "work"), "--out", str(out), "--accelerator", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["held_out"] == "jsrt" and report["quick"]
    assert not any(unit.startswith("jsrt/") for unit in report["pretraining"]["units"])
    assert set(report["pretraining"]["steps_per_unit"]) == set(report["pretraining"]["units"])
    runs = {(r["backbone"], float(r["fraction"])) for r in report["rows"] if r["metric"] == "mean_dice"}
    assert runs == {(b, f) for b in ("single_task", "multitask") for f in (0.1, 1.0)}
    pretrained = json.loads((tmp_path / "work" / "sweep" / "multitask_full_f0.1_s0" / "summary.json").read_text())
    assert report["pretraining"]["run"] in json.dumps(pretrained)  # the multitask rows start from that run
    dice = [d for d in report["seed_statistics"]["differences"] if d["metric"] == "mean_dice"]
    assert {d["row"] for d in dice} == {"multitask full f0.1", "multitask full f1"}  # paired at each fraction
    assert all(d["against"] == d["row"].replace("multitask", "single_task") and d["seeds"] == [0] for d in dice)
