"""bench/eve_real.py: it finds adam_real's pretrainings by their computed names, pairs the locality
differences by test patient, and its README table renders what its results file records."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from bench_modules import load_bench

from xrayfm.errors import XrayfmError

MODELS = ["random", "moco_v2", "adam", "random_vit", "eva_x_mim"]


@pytest.fixture(scope="module")
def eve() -> ModuleType:
    return load_bench("eve_real")


def test_pretraining_settings_default_to_adam_reals_and_are_checked_by_it(eve: ModuleType) -> None:
    adam = eve.adam_real
    args = eve.parse_args([])
    defaults = adam.parse_args([])
    for key in ("shared", "work", "arch", "img_size", "budget", "batch", "queue_size"):
        assert getattr(args, key) == getattr(defaults, key) == getattr(args.pretraining, key)
    args = eve.parse_args(["--arch", "resnet18", "--img-size", "32", "--budget", "3", "--batch", "4"])
    tiny = adam.parse_args(["--arch", "resnet18", "--img-size", "32", "--budget", "3", "--batch", "4"])
    assert adam.pretrain_plans(args.pretraining, {"hash": "h"}) == adam.pretrain_plans(tiny, {"hash": "h"})
    for bad in (["--budget", "100"], ["--img-size", "40"], ["--n-boot", "0"]):
        with pytest.raises(SystemExit):
            eve.parse_args(bad)


def test_patient_bootstrap_of_identical_models_is_exactly_zero(eve: ModuleType) -> None:
    hits = [True, False, True, True, False, False]
    d = eve.paired_patient_bootstrap(hits, hits, ["a", "a", "b", "b", "c", "c"], n_boot=200)
    assert (d["difference"], d["low"], d["high"]) == (0.0, 0.0, 0.0) and not d["excludes_zero"]
    assert d["patients"] == 3 and d["queries"] == 6 and d["n_boot"] == 200


def test_patient_bootstrap_draws_patients_not_queries(eve: ModuleType) -> None:
    """A hits every query, B half of every patient's: every patient resample differs by 0.5 (a
    query resample would not), so the interval is the point."""
    patients = [f"p{i // 4}" for i in range(40)]
    a = [True] * 40
    b = [i % 4 < 2 for i in range(40)]
    d = eve.paired_patient_bootstrap(a, b, patients, n_boot=500, seed=1)
    assert (d["difference"], d["low"], d["high"]) == (0.5, 0.5, 0.5) and d["excludes_zero"]
    assert eve.paired_patient_bootstrap(b, a, patients, n_boot=500, seed=1)["difference"] == -0.5


def test_patient_bootstrap_weights_patients_by_their_queries(eve: ModuleType) -> None:
    """p1 (1 query) favours A, p2 (3 queries) is a tie: 1/4 overall; resamples are {p1, p1} = 1,
    {p2, p2} = 0 (a quarter each) or a mix = 1/4, so the 95% interval is [0, 1]."""
    d = eve.paired_patient_bootstrap([1, 1, 0, 1], [0, 1, 0, 1], ["p1", "p2", "p2", "p2"], n_boot=4000, seed=0)
    assert d["difference"] == 0.25 and (d["low"], d["high"]) == (0.0, 1.0) and not d["excludes_zero"]


def test_patient_bootstrap_refuses_unpaired_input(eve: ModuleType) -> None:
    with pytest.raises(XrayfmError, match="paired bootstrap"):
        eve.paired_patient_bootstrap([True, False], [True], ["a", "b"], n_boot=10)


def test_models_scored_on_other_queries_are_not_compared(eve: ModuleType) -> None:
    def result(landmarks: list[str]) -> dict:
        return {"locality": {"per_query": {"patient": ["p1", "p2"], "landmark": landmarks, "hit": [True, False]}}}

    same = {label: result(["apex", "hilum"]) for label in MODELS}
    assert [(d["model"], d["against"]) for d in eve.differences(same, 10, 0)] == list(eve.COMPARISONS)
    with pytest.raises(XrayfmError, match="other landmark queries"):
        eve.differences({**same, "adam": result(["hilum", "apex"])}, 10, 0)


def _report() -> dict:
    def model(arch: str, pretrained: str | None, acc: float, medians: tuple, controls: tuple) -> dict:
        comp = {s: {"median": m, "control_median": c, "q25": 0, "q75": 1, "n": 102}
                for s, m, c in zip(("side_by_side_2", "stacked_3", "grid_2x2"), medians, controls)}  # fmt: skip
        return {"arch": arch, "pretrained": pretrained, "compositionality": comp,
                "locality": {"accuracy": acc, "chance": 0.12, "queries": 408, "patients": 51, "per_landmark": {}}}  # fmt: skip

    return {
        "img_size": 112, "pretraining_seeds": 1, "pool": {"folder": "pool_014f1e9a4c7b"},
        "test_set": {"images": 51, "patients": 51}, "settings": {"n_boot": 2000,
                                                                 "splits": ["side_by_side_2", "stacked_3", "grid_2x2"]},
        "models": {"random": model("resnet50", None, 0.31, (0.9875, 0.97, 0.99), (0.9, 0.8875, 0.9)),
                   "adam": model("resnet50", "adam_5c76d8a114f8", 0.5625, (0.8, 0.7, 0.75), (0.6, 0.5, 0.65))},
        "differences": [{"model": "adam", "against": "random", "difference": 0.2525, "low": -0.0125, "high": 0.41}],
        "provenance": {"command": ["bench/eve_real.py"], "date": "2026-01-01"},
    }  # fmt: skip


def test_readme_table_of_the_eve_benchmark() -> None:
    tables = load_bench("readme_tables")
    stem, render = tables.renderer("eve_real_cpu")
    text = render(_report(), "bench/results/eve_real_cpu.json")
    assert stem == "eve_real_cpu"
    assert "| random (resnet50, random init) | 0.310 (0.120) | 0.988 / 0.970 / 0.990 (0.900 / 0.888 / 0.900) |" in text
    assert "| adam (resnet50, `adam_5c76d8a114f8`) | 0.563 (0.120) | 0.800 / 0.700 / 0.750 (0.600 / 0.500 / 0.650) |" in text  # fmt: skip
    flat = " ".join(text.split())
    assert "adam - random +0.253 [-0.013, +0.410]" in flat and "(2,000 resamples)" in flat
    assert "51 JSRT test images (51 patients, 408 landmark patches)" in flat and "`pool_014f1e9a4c7b`" in flat
    assert "pretrained once (one seed)" in flat and "`python bench/eve_real.py`" in flat


@pytest.mark.slow
def test_whole_benchmark_on_tiny_pretrainings(eve: ModuleType, shared_datasets: Path, tmp_path: Path) -> None:
    """adam_real's three pretrainings at a tiny config, then Eve on the 51 held-out JSRT test images."""
    adam, work = eve.adam_real, tmp_path / "work"
    tiny = ["--shared", str(shared_datasets), "--work", str(work), "--arch", "resnet18", "--img-size", "32",
            "--budget", "3", "--batch", "4", "--queue-size", "16"]  # fmt: skip
    argv = [*tiny, "--out-dir", str(tmp_path / "eve"), "--out", str(tmp_path / "eve_real.json"), "--n-boot", "200",
            "--projection", "pca", "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit, match="run bench/adam_real.py first"):
        eve.main(argv)
    args = adam.parse_args([*tiny, "--accelerator", "cpu"])
    pool_dir, pool = adam.write_pool(shared_datasets, work, adam.held_out(adam.experiments(shared_datasets, args)))
    folders = {init: adam.pretrain(init, plan, pool_dir, work, args) for init, plan in adam.pretrain_plans(args, pool).items()}  # fmt: skip

    report = json.loads(eve.main(argv).read_text())
    assert report["benchmark"] == "eve_real" and report["pretraining_seeds"] == 1
    assert {"command", "git", "date", "machine", "software"} <= report["provenance"].keys()
    assert report["test_set"]["images"] == 51 and report["test_set"]["patients"] == 51
    assert report["pool"]["folder"] == pool_dir.name
    assert {k: p["artefact"] for k, p in report["pretraining"].items()} == {k: f.name for k, f in folders.items()}
    assert list(report["models"]) == MODELS
    for label, m in report["models"].items():
        saved = json.loads((tmp_path / "eve" / label / "anatomy.json").read_text())
        assert m["locality"]["accuracy"] == saved["locality"]["accuracy"]
        assert m["compositionality"]["grid_2x2"]["median"] == saved["compositionality"]["grid_2x2"]["median"]
        assert m["locality"]["queries"] == 408 and (tmp_path / "eve" / label / "locality.png").is_file()
        assert m["pretrained"] == (folders[label].name if label in folders else None)
        assert m["arch"] == ("eva_x_tiny_patch16" if "vit" in label or "eva" in label else "resnet18")
    assert report["models"]["adam"]["embedding_dim"] == 512 and report["models"]["random_vit"]["embedding_dim"] == 192
    acc = {label: m["locality"]["accuracy"] for label, m in report["models"].items()}
    for d in report["differences"]:
        assert d["difference"] == pytest.approx(acc[d["model"]] - acc[d["against"]])
        assert d["low"] <= d["difference"] <= d["high"] and d["patients"] == 51
    text = load_bench("readme_tables").render("<!-- bench:eve_real:start -->\n<!-- bench:eve_real:end -->\n", tmp_path)
    assert f"| adam (resnet18, `{folders['adam'].name}`) |" in text and "eva_x_mim - random_vit" in text
