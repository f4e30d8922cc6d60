"""bench/adam_real.py: the pretraining pool holds out every downstream test patient, the inits share one
budget, and the whole benchmark runs at a tiny config into a results file of the documented form."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from bench_modules import load_bench

from xrayfm.data.registry import build_dataset

REPO = Path(__file__).resolve().parents[2]
INITS = {"random", "random_vit", "adam", "moco_v2", "eva_x_mim"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("adam_real")


def test_budget_must_split_evenly_into_adams_stages(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--budget", "100"])
    args = bench.parse_args(["--budget", "12", "--batch", "4"])
    plans = bench.pretrain_plans(args, {"hash": "h"})
    seen = {init: plan["train"]["steps"] * len(plan.get("stages", [0])) * plan["train"]["batch_size"]
            for init, plan in plans.items()}  # fmt: skip
    assert seen == {"adam": 48, "moco_v2": 48, "eva_x_mim": 48}
    assert plans["adam"]["stages"] == [0, 2, 4] and plans["moco_v2"]["stages"] == [0]


def test_pool_holds_out_every_test_patient_of_the_downstream_sets(
    bench: ModuleType, shared_datasets: Path, tmp_path: Path
) -> None:
    args = bench.parse_args(["--shared", str(shared_datasets), "--work", str(tmp_path)])
    plans = bench.experiments(shared_datasets, args)
    held = bench.held_out(plans)
    kermany_test = build_dataset("csv", shared_datasets / "kermany_pneumonia_test224", "test", split_column="")
    assert held["kermany_pneumonia_test224"]["images"] == {r.image.resolve() for r in kermany_test.records}
    assert 0 < len(kermany_test) < 624 and len(held["jsrt_lungs"]["images"]) == 51
    folder, facts = bench.write_pool(shared_datasets, tmp_path, held)
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    pooled = {Path(r["image"]) for r in rows}
    assert not pooled & (held["jsrt_lungs"]["images"] | held["kermany_pneumonia_test224"]["images"])
    assert not {r["patient_id"] for r in rows} & (held["jsrt_lungs"]["patients"] | held["kermany_pneumonia_test224"]
                                                  ["patients"])  # fmt: skip
    assert {r["source"] for r in rows} == set(bench.POOL_SETS)
    assert (
        facts["train_images"] + facts["val_images"] == len(rows) == sum(s["pooled"] for s in facts["sources"].values())
    )
    assert facts["sources"]["jsrt_lungs"]["held_out"] == 51 and facts["sources"]["covid_v7labs_lungs"]["held_out"] == 0
    pool = build_dataset("csv", folder, "train", **bench.POOL_OPTIONS)
    assert len(pool) == facts["train_images"] and all(r.image.is_file() for r in pool.records)
    assert bench.write_pool(shared_datasets, tmp_path, held)[0] == folder  # named by its rows: the same pool


def _run(tmp_path: Path, shared: Path, *extra: str) -> dict:
    out = tmp_path / "adam_real.json"
    cmd = [sys.executable, str(REPO / "bench" / "adam_real.py"), "--shared", str(shared), "--work",
           str(tmp_path / "work"), "--out", str(out), "--arch", "resnet18", "--img-size", "32", "--budget", "3",
           "--batch", "4", "--queue-size", "16", "--fractions", "0.01,0.1", "--seeds", "0", "--epochs-scale", "0.25",
           "--n-boot", "20", "--accelerator", "cpu", *extra]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_whole_benchmark_at_a_tiny_config(bench: ModuleType, shared_datasets: Path, tmp_path: Path) -> None:
    report = _run(tmp_path, shared_datasets)
    assert report["benchmark"] == "adam_real" and report["arch"] == "resnet18"
    assert {"command", "git", "date", "machine", "software"} <= report["provenance"].keys()
    assert set(report["pretraining"]) == {"adam", "moco_v2", "eva_x_mim"}
    assert {p["images_seen"] for p in report["pretraining"].values()} == {12}
    assert [s["granularity"] for s in report["pretraining"]["adam"]["stages"]] == [0, 2, 4]
    assert report["pool"]["train_images"] == report["pretraining"]["eva_x_mim"]["images"]
    assert report["pool"]["train_images"] == report["pretraining"]["adam"]["images"]
    for name, n_test in (("kermany_pneumonia", None), ("jsrt_lungs", 51)):
        part = report["experiments"][name]
        assert part["runs"] == 10 and part["runs_reused"] == 0
        assert part["test_images"]["runs"] == 10 and (n_test is None or part["test_images"]["n"] == n_test)
        stats = part["seed_statistics"]
        assert {(r["backbone"], r["fraction"]) for r in stats["rows"]} == {(i, f) for i in INITS for f in (0.01, 0.1)}
        assert all(r["values"] and r["n_seeds"] == 1 for r in stats["rows"])
        assert not stats["notes"], stats["notes"]
        pairs = {(d["row"].split()[0], d["against"].split()[0], d["row"].split()[2]) for d in stats["differences"]}
        assert pairs == {(a, b, f) for a, b in bench.COMPARISONS for f in ("f0.01", "f0.1")}
        for d in stats["differences"]:
            assert d["excludes_zero"] == (d["low"] > 0 or d["high"] < 0)
            assert d["per_seed"] and len(d["seeds"]) == 1
    # the differences are paired on one image set: re-scoring one pair by hand gives the recorded difference
    part = report["experiments"]["kermany_pneumonia"]
    run_a = tmp_path / "work" / "kermany_pneumonia" / "resnet" / "random_full_f0.1_s0"
    run_b = tmp_path / "work" / "kermany_pneumonia" / "resnet" / "adam_full_f0.1_s0"
    ids = [np.load(r / "eval_test" / "predictions.npz")["ids"].tolist() for r in (run_a, run_b)]
    assert sorted(ids[0]) == sorted(ids[1]) and len(ids[0]) == part["test_images"]["n"]
    value = {r["backbone"]: float(r["value"]) for r in part["rows"]
             if r["fraction"] == "0.1" and r["metric"] == "mean_auroc" and r["backbone"] in ("random", "adam")}  # fmt: skip
    recorded = next(d for d in part["seed_statistics"]["differences"]
                    if d["row"] == "adam full f0.1" and d["against"] == "random full f0.1" and d["metric"] == "mean_auroc")  # fmt: skip
    assert recorded["difference"] == pytest.approx(value["adam"] - value["random"])
    assert not list((tmp_path / "work").glob("*/*/*/last.ckpt"))  # finished fine-tuning runs keep no checkpoint

    blocks = "".join(f"<!-- bench:adam_real:{b}:start -->\n<!-- bench:adam_real:{b}:end -->\n"
                     for b in ("kermany_pneumonia", "jsrt_lungs:differences", "provenance"))  # fmt: skip
    text = load_bench("readme_tables").render(blocks, tmp_path)
    assert "| adam | full | 0.1 |" in text and "| random_vit | full | 0.01 |" in text
    assert "| eva_x_mim full f0.1 | random_vit full f0.1 | masks mean_dice | 1 |" in text
    assert report["pool"]["folder"] in text and "images seen" in text

    again = _run(tmp_path, shared_datasets, "--only", "jsrt_lungs")  # everything cached: nothing trains
    assert again["experiments"]["jsrt_lungs"]["runs_reused"] == 10
    assert again["experiments"]["kermany_pneumonia"] == report["experiments"]["kermany_pneumonia"]
    assert again["pretraining"] == report["pretraining"]
